"""The Python API writes what the command line writes: same files, same bytes, result objects with the counts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from curator import api
from curator.cli import main
from curator.ingest.base import UnreadableInput

ROOT = Path(__file__).resolve().parent.parent
INPUTS = [ROOT / "sample_data" / "pirate_training_set.jsonl", ROOT / "sample_data" / "gsm8k_train_400.jsonl"]


def _digests(out: Path) -> dict[str, str]:
    files = sorted(p for sub in ("kept", "dropped") for p in (out / sub).glob("*.parquet"))
    files += [out / "quarantine.parquet"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}


def test_curate_from_python_gives_the_cli_bytes_and_the_counts(tmp_path: Path) -> None:
    overrides = ["--config", str(tmp_path / "c.yaml")]
    (tmp_path / "c.yaml").write_text("pii: {enabled: false}\n", encoding="utf-8")
    assert main(["curate", *map(str, INPUTS), "--out", str(tmp_path / "cli"), "--workers", "1", *overrides]) == 0
    result = api.curate(tmp_path / "c.yaml", tmp_path / "py", inputs=INPUTS, progress=False)
    assert _digests(tmp_path / "py") == _digests(tmp_path / "cli") != {}
    counts = result.counts
    assert counts["read"] == counts["kept"] + counts["dropped"] + counts["quarantined"] == 410
    assert result.kept_parts and all(p.parent == tmp_path / "py" / "kept" for p in result.kept_parts)
    assert api.kept_parts(result) == api.kept_parts(tmp_path / "py")


def test_api_errors_name_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput, match="no inputs"):
        api.curate(None, tmp_path / "out", progress=False)
    with pytest.raises(UnreadableInput, match="no such file"):
        api.curate(None, tmp_path / "out", inputs=[tmp_path / "missing.jsonl"], progress=False)
    with pytest.raises(UnreadableInput, match="no kept records"):
        api.kept_parts(tmp_path)
