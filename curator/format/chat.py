"""Render a canonical record with the tokenizer's chat template into `input_ids` and a `loss_mask`.

The mask is plain data built from renders, not from template magic (after nanochat's
`render_conversation`). For every assistant turn k we render the conversation up to turn k with the
generation prompt (`head_k`) and up to and including turn k (`end_k`); the tokens between the two
are turn k's target tokens. We *verify* instead of trusting offsets: each render must be a string
prefix of the full render and its tokens a token prefix of the full tokens ("prefix" method). When a
template is not prefix-stable we fall back, and count which fallback each record used:

- "offsets": the renders are string prefixes but tokenization merges across the boundary; the
  character boundaries are mapped to tokens with the fast tokenizer's offsets.
- "search": the renders are not string prefixes (templates that rewrite earlier turns); each
  assistant content is located in order in the full render and its span is extended through the
  end-of-turn token that follows it.

A template must carry what the record holds: after rendering, every tool call's name and arguments,
every tool result, the tool schemas and the speaker names of the record must appear in the text
(`dropped_content`). Many templates ignore `tools` and `tool_calls` (SmolLM2's own renders a
tool-calling turn as an empty assistant turn and loses the schemas), so such a record is rendered
with the project's ChatML-with-tools template instead (when the tokenizer has ChatML's special
tokens) and counted per reason in `template_fallback`; when even that drops content, the record is
dropped as "template_drops_content". It is never trained on silently.

Within a turn's span, tokens after the last end-of-turn token (ChatML's trailing newline) are not
targets; the end-of-turn/EOS token itself is. Masks never look at token ids to find padding, so they
stay correct when pad == eos. Records longer than `seq_len` are truncated by whole turns (the
conversation then ends after the last assistant turn that fits) or dropped, per `format.overlong`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curator.config import FormatConfig

# ChatML with Hermes/Qwen-style tool rendering; for plain messages it renders exactly
# '<|im_start|>{role}\n{content}<|im_end|>\n' per turn, the classic ChatML layout. A message's `name`
# (a tool result's tool, a speaker) goes into the header as in OpenAI's ChatML ('<|im_start|>tool name=python').
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{ '# Tools\n\n<tools>' }}"
    "{%- for tool in tools %}{{ '\n' + (tool | tojson) }}{%- endfor %}"
    "{{ '\n</tools><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{%- set content = message['content'] if message['content'] is defined else '' %}"
    "{%- set name = (' name=' + message['name']) if (message['name'] is defined and message['name']) else '' %}"
    "{{ '<|im_start|>' + message['role'] + name + '\n' + content }}"
    "{%- if message['tool_calls'] is defined %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{%- set args = fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson) %}"
    "{{ ('\n' if (content or not loop.first) else '') + '<tool_call>\n{\"name\": \"' + fn['name']"
    " + '\", \"arguments\": ' + args + '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{ '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)
# Special tokens that close a turn in common templates, besides the tokenizer's EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")
UNCATEGORIZED = "uncategorized"
# Why a record was rendered with the ChatML-with-tools fallback: what its own template dropped.
CONTENT_KINDS = ("tool_calls", "tool_results", "tool_schemas", "names")
FALLBACK_TEMPLATE_NAME = "chatml_tools"

log = logging.getLogger(__name__)


class TokenizerError(Exception):
    """The configured tokenizer cannot be loaded; the message says which path and what to do."""


def load_tokenizer(path: str | Path | None) -> tuple[Any, str]:
    """Load a local fast tokenizer (never downloads) and say whose chat template it uses.

    A tokenizer without a chat template gets the built-in ChatML one ("builtin_chatml").
    """
    from transformers import AutoTokenizer

    if path is None:
        raise TokenizerError(
            "format.tokenizer is not set: point it at a local tokenizer or model directory "
            "(for example the one trainer.tiny.train_tokenizer writes)"
        )
    if not Path(path).is_dir():
        raise TokenizerError(f"format.tokenizer={path}: not a directory; give a local tokenizer/model directory")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"format.tokenizer={path}: cannot load a tokenizer from it: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"format.tokenizer={path}: a fast (Rust) tokenizer is required for offsets")
    source = "tokenizer" if tok.chat_template else "builtin_chatml"
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok, source


def tokenizer_hash(path: str | Path) -> str:
    """sha256 of tokenizer.json (the vocabulary and merges), or of every tokenizer file when it has none."""
    root = Path(path)
    files = [root / "tokenizer.json"] if (root / "tokenizer.json").is_file() else sorted(root.glob("*token*"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def to_hf_messages(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Canonical messages in the Hugging Face chat format (tool_calls as functions, context in the first user turn)."""
    out: list[dict[str, Any]] = []
    context = rec.get("context")
    context_placed = not context
    for m in rec["messages"]:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        if not context_placed and m["role"] == "user":
            if context not in msg["content"]:
                msg["content"] = f"{msg['content']}\n\n{context}"
            context_placed = True
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    "type": "function",
                    **({"id": c["id"]} if c.get("id") else {}),
                    "function": {"name": c["name"], "arguments": _json_or_text(c.get("arguments") or "")},
                }
                for c in m["tool_calls"]
            ]
        if m.get("name"):
            msg["name"] = m["name"]
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def _json_or_text(text: str) -> Any:
    """Tool-call arguments as a JSON value when they parse (templates expect a mapping), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class _Renders:
    """The template renders of one record, and whether they are string prefixes of the full render."""

    msgs: list[dict[str, Any]]
    full: str
    heads: list[str | None]
    ends: list[str]
    prefix_ok: bool
    fallback: tuple[str, ...] = ()  # what the tokenizer's own template dropped (rendered with the fallback)

    def texts(self) -> list[str]:
        """Every render to tokenize (the full one first)."""
        return [self.full, *(self.heads if self.prefix_ok else []), *(self.ends if self.prefix_ok else [])]


@dataclass
class Encoded:
    """One rendered record: token ids, the target mask, and how the mask was verified."""

    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # int8, 1 = target token
    method: str
    truncated_turns: int = 0
    template_fallback: tuple[str, ...] = ()


@dataclass
class Rejected:
    """A record that cannot become a training document, with a counted reason."""

    reason: str
    detail: str = ""


@dataclass
class FormatStats:
    """Counts of what formatting did: mask methods, truncations, drops by reason."""

    methods: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    truncated_records: int = 0
    truncated_turns: int = 0
    tools_unparseable: int = 0
    fallback_records: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)
    fallback_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain, key-sorted dict for the manifest."""
        return {
            "mask_methods": dict(sorted(self.methods.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "truncated_records": self.truncated_records,
            "truncated_turns": self.truncated_turns,
            "tools_unparseable": self.tools_unparseable,
            "template_fallback": {
                "template": FALLBACK_TEMPLATE_NAME if self.fallback_hash else None,
                "template_hash": self.fallback_hash,
                "records": self.fallback_records,
                "by_reason": dict(sorted(self.fallback_reasons.items())),
            },
        }


class ChatFormatter:
    """Turns canonical records into (input_ids, loss_mask) with one tokenizer and one FormatConfig."""

    def __init__(self, tokenizer: Any, cfg: FormatConfig) -> None:
        self.tok = tokenizer
        self.cfg = cfg
        self.stats = FormatStats()
        vocab = tokenizer.get_vocab()
        ends = {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and t in tokenizer.all_special_tokens}
        if tokenizer.eos_token_id is not None:
            ends.add(tokenizer.eos_token_id)
        self.end_of_turn_ids = frozenset(ends)
        self.template_hash = hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
        # The fallback needs ChatML's turn tokens as special tokens of this tokenizer, and must differ from its own.
        chatml = {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
        self._warned = False
        self.fallback_template = CHATML_TEMPLATE if chatml and tokenizer.chat_template != CHATML_TEMPLATE else None
        if self.fallback_template:
            self.stats.fallback_hash = hashlib.sha256(self.fallback_template.encode()).hexdigest()

    def _render(self, messages: list[dict[str, Any]], tools: list[Any] | None, gen: bool,
                template: str | None = None) -> str:
        return self.tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen,
                                            chat_template=template)

    def encode(self, rec: dict[str, Any]) -> Encoded | Rejected:
        """Render one record; a record that cannot be rendered or masked is a counted `Rejected`."""
        return next(self.encode_many([rec]))[1]

    def encode_many(
        self, records: Iterable[dict[str, Any]], chunk: int = 256
    ) -> Iterator[tuple[str, Encoded | Rejected]]:
        """(id, result) per record, in input order; renders of `chunk` records are tokenized in one call."""
        batch: list[dict[str, Any]] = []
        for rec in records:
            batch.append(rec)
            if len(batch) >= chunk:
                yield from self._encode_chunk(batch)
                batch = []
        if batch:
            yield from self._encode_chunk(batch)

    def _encode_chunk(self, recs: list[dict[str, Any]]) -> Iterator[tuple[str, Encoded | Rejected]]:
        prepared = [self._prepare(r) for r in recs]
        texts = sorted({t for p in prepared if isinstance(p, _Renders) for t in p.texts()})
        encodings = self.tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        ids_of = {t: e.ids for t, e in zip(texts, encodings, strict=True)}
        for rec, prep in zip(recs, prepared, strict=True):
            result = prep if isinstance(prep, Rejected) else self._masked(rec, prep, ids_of)
            if isinstance(result, Rejected):
                self.stats.dropped[result.reason] += 1
            else:
                self.stats.methods[result.method] += 1
                if result.template_fallback:
                    self.stats.fallback_records += 1
                    self.stats.fallback_reasons.update(result.template_fallback)
                if result.truncated_turns:
                    self.stats.truncated_records += 1
                    self.stats.truncated_turns += result.truncated_turns
            yield rec["id"], result

    def _prepare(self, rec: dict[str, Any]) -> _Renders | Rejected:
        """Every render the mask needs: the full conversation, and per assistant turn its head and end."""
        msgs = to_hf_messages(rec)
        assistant = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
        if not assistant:
            return Rejected("no_assistant_turn")
        tools = None
        if rec.get("tools"):
            parsed = _json_or_text(rec["tools"])
            if isinstance(parsed, list):
                tools = parsed
            else:
                self.stats.tools_unparseable += 1
        renders = self._renders(msgs, assistant, tools, None)
        if isinstance(renders, Rejected):
            return renders
        needles = content_needles(msgs, tools)
        dropped = dropped_content(needles, renders.full)
        if not dropped:
            return renders
        if self.fallback_template is None:
            return Rejected("template_drops_content", f"the chat template drops {', '.join(dropped)}")
        fallback = self._renders(msgs, assistant, tools, self.fallback_template)
        if isinstance(fallback, Rejected):
            return fallback
        still = dropped_content(needles, fallback.full)
        if still:
            return Rejected("template_drops_content", f"both templates drop {', '.join(still)}")
        if not self._warned:
            self._warned = True
            log.warning("the chat template of %s drops %s of some records; they are rendered with the ChatML-with-"
                        "tools fallback instead (counted in the manifest's format.template_fallback)",
                        getattr(self.tok, "name_or_path", "the tokenizer"), ", ".join(dropped))
        fallback.fallback = tuple(dropped)
        return fallback

    def _renders(self, msgs: list[dict[str, Any]], assistant: list[int], tools: list[Any] | None,
                 template: str | None) -> _Renders | Rejected:
        """The full render and, per assistant turn, its head and end, with one template."""
        try:
            full = self._render(msgs, tools, False, template)
            heads = [self._render(msgs[:k], tools, True, template) if k else None for k in assistant]
            ends = [self._render(msgs[: k + 1], tools, False, template) for k in assistant]
        except Exception as exc:  # jinja raises TemplateError/TypeError/... from user templates
            return Rejected("template_error", f"{type(exc).__name__}: {str(exc)[:200]}")
        prefix_ok = all(
            h is not None and full.startswith(h) and full.startswith(e) and len(h) <= len(e)
            for h, e in zip(heads, ends, strict=True)
        )
        return _Renders(msgs, full, heads, ends, prefix_ok)

    def _masked(self, rec: dict[str, Any], r: _Renders, ids_of: dict[str, list[int]]) -> Encoded | Rejected:
        """Verify the renders as token prefixes, fall back when they are not, and build the mask."""
        spans = None
        if r.prefix_ok:
            ids = ids_of[r.full]
            parts = [ids_of[h] for h in r.heads] + [ids_of[e] for e in r.ends]  # type: ignore[index]
            if all(ids[: len(x)] == x for x in parts):
                n = len(r.heads)
                lens = [len(x) for x in parts]
                spans = (np.asarray(ids, dtype=np.int32), "prefix", list(zip(lens[:n], lens[n:], strict=True)))
            else:
                enc = self.tok(r.full, add_special_tokens=False, return_offsets_mapping=True)
                bounds = [(len(h), len(e)) for h, e in zip(r.heads, r.ends, strict=True)]  # type: ignore[arg-type]
                spans = (np.asarray(enc["input_ids"], dtype=np.int32), "offsets", _chars_to_tokens(enc, bounds))
        else:
            spans = self._search_spans(rec, r.msgs, r.full)
            if spans is None:
                return Rejected("mask_unverifiable", "assistant content not found in the rendered template")
        result = self._finish(*spans)
        if isinstance(result, Encoded):
            result.template_fallback = r.fallback
        return result

    def _search_spans(
        self, rec: dict[str, Any], msgs: list[dict[str, Any]], full: str
    ) -> tuple[np.ndarray, str, list[tuple[int, int]]] | None:
        """Locate each assistant content in order in the full render; extend each span through end-of-turn."""
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        cursor, bounds = 0, []
        for m in msgs:
            if m["role"] != "assistant":
                continue
            text = m["content"].strip()
            start = full.find(text, cursor) if text else cursor
            if start < 0:
                return None
            cursor = start + len(text)
            bounds.append((start, cursor))
        spans = _chars_to_tokens(enc, bounds)
        out = []
        for s, e in spans:
            j = e
            while j < len(ids) and j < e + 8 and ids[j] not in self.end_of_turn_ids:
                j += 1
            out.append((s, j + 1 if j < len(ids) and ids[j] in self.end_of_turn_ids else e))
        return np.asarray(ids, dtype=np.int32), "search", out

    def _finish(self, ids: np.ndarray, method: str, spans: list[tuple[int, int]]) -> Encoded | Rejected:
        """Trim spans after their last end-of-turn token, fit `seq_len` by whole turns, build the mask."""
        trimmed = []
        for s, e in spans:
            span_ids = ids[s:e]
            hits = np.flatnonzero(np.isin(span_ids, list(self.end_of_turn_ids)))
            trimmed.append((s, s + int(hits[-1]) + 1 if len(hits) else e, e))
        dropped_turns = 0
        seq_len = self.cfg.seq_len
        if len(ids) > seq_len and not self.cfg.split_documents:
            if self.cfg.overlong == "drop":
                return Rejected("overlong", f"{len(ids)} tokens > seq_len {seq_len}")
            fitting = [i for i, (_, _, end) in enumerate(trimmed) if end <= seq_len]
            if not fitting:
                return Rejected("overlong", f"first assistant turn ends at token {trimmed[0][2]} > {seq_len}")
            keep = fitting[-1] + 1
            dropped_turns = len(trimmed) - keep
            trimmed = trimmed[:keep]
            ids = ids[: trimmed[-1][2]]
        mask = np.zeros(len(ids), dtype=np.int8)
        chosen = trimmed if self.cfg.train_on == "all_assistant" else trimmed[-1:]
        for s, e, _ in chosen:
            mask[s:e] = 1
        if not mask.any():
            return Rejected("no_trainable_tokens")
        return Encoded(ids, mask, method, dropped_turns)


def template_for(tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> str | None:
    """The template to render these messages with, by the packer's rule: None (the tokenizer's own) unless
    that drops content of them (`content_needles`) and the tokenizer has ChatML's tokens: then CHATML_TEMPLATE."""
    own = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    chatml = {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
    if not chatml or not dropped_content(content_needles(messages, tools), own):
        return None
    return CHATML_TEMPLATE


def parse_tools(text: str | None) -> list[Any] | None:
    """A record's `tools` (JSON text) as the list templates expect, or None when absent or not a list."""
    parsed = _json_or_text(text) if text else None
    return parsed if isinstance(parsed, list) else None


def content_needles(msgs: list[dict[str, Any]], tools: list[Any] | None) -> dict[str, list[str]]:
    """What a render of these messages must contain, by kind: tool calls (names, argument keys and values),
    tool results, tool schemas (string values and parameter names) and speaker names."""
    needles: dict[str, list[str]] = {kind: [] for kind in CONTENT_KINDS}
    for m in msgs:
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            needles["tool_calls"].append(fn["name"])
            needles["tool_calls"].extend(_leaves(fn.get("arguments"), keys=True))
        if m["role"] == "tool" and m["content"].strip():
            needles["tool_results"].append(m["content"].strip())
        if m.get("name"):
            needles["names"].append(m["name"])
    for tool in tools or []:
        needles["tool_schemas"].extend(_leaves(tool, keys=False))
    return {kind: [n for n in v if n] for kind, v in needles.items() if any(v)}


def _leaves(value: Any, keys: bool) -> list[str]:
    """The texts a JSON value shows when rendered: string and scalar leaves, mapping keys when `keys`
    (a schema's structural keys like "type" are not required, its parameter names under "properties" are)."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if keys:
                out.append(str(k))
            out.extend(_leaves(v, keys=keys or k == "properties"))
        return out
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v, keys)]
    if isinstance(value, str):
        return [value.strip()]
    return [] if value is None else [json.dumps(value)]


def dropped_content(needles: dict[str, list[str]], rendered: str) -> list[str]:
    """The kinds of content with a needle that appears in `rendered` neither as is nor JSON-escaped."""

    def shown(text: str) -> bool:
        return text in rendered or any(json.dumps(text, ensure_ascii=a)[1:-1] in rendered for a in (False, True))

    return [kind for kind, texts in needles.items() if not all(shown(t) for t in texts)]


def _chars_to_tokens(enc: Any, bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Map character ranges to token ranges: a token belongs to a range when it starts inside it."""
    starts = np.asarray([o[0] for o in enc["offset_mapping"]], dtype=np.int64)
    return [(int(np.searchsorted(starts, s)), int(np.searchsorted(starts, e))) for s, e in bounds]
