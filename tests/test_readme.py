"""The README's Python blocks run as printed: the API writes the command line's bytes, and TRL trains on our shards."""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from curator.cli import main

ROOT = Path(__file__).resolve().parent.parent


def readme_block(heading: str) -> str:
    """The first ```python block of the README section `## {heading}`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


def run_block(heading: str, work: Path) -> tuple[dict[str, Any], str]:
    """Run a README block as a script from `work` (beside a link to sample_data/); its globals and stdout."""
    script = work / f"{heading.lower().replace(' ', '_')}.py"
    script.write_text(readme_block(heading), encoding="utf-8")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(work)
        env = runpy.run_path(str(script), run_name="__main__")
    return env, out.getvalue()


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the HTML/JSON reports (which name their directory)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith("report.")}


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """The `## Python API` block, run once in a fresh dir (it curates, trains a tokenizer, packs, exports)."""
    work = tmp_path_factory.mktemp("readme")
    (work / "sample_data").symlink_to(ROOT / "sample_data")
    env, printed = run_block("Python API", work)
    return work, env, printed


def test_python_api_block_writes_the_bytes_of_the_commands(
    api_run: tuple[Path, dict[str, Any], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work, env, printed = api_run
    for line in readme_block("Python API").splitlines():  # what the block says it prints, it prints
        if line.startswith("print(") and "  # " in line:
            assert line.split("  # ", 1)[1] in printed.splitlines()
    counts = env["run"].counts
    assert counts["read"] == counts["kept"] + counts["dropped"] + counts["quarantined"] == 110
    assert sum(env["chats"].counts.values()) == counts["kept"] == env["shards"].manifest["records"]["count"]

    (work / "c.yaml").write_text(yaml.safe_dump(env["cfg"].model_dump(mode="json")), encoding="utf-8")
    monkeypatch.chdir(work)
    assert main(["curate", "--config", "c.yaml", "--out", "cli/curated", "--workers", "1"]) == 0
    assert main(["pack", "cli/curated", "--out", "cli/shards", "--config", "c.yaml",
                 "--tokenizer", str(env["tokenizer"])]) == 0
    assert main(["export", "cli/curated", "--out", "cli/openai", "--config", "c.yaml", "--format", "openai"]) == 0
    pairs = {"runs/api/curated/kept": "cli/curated/kept", "runs/api/curated/dropped": "cli/curated/dropped",
             "runs/api/shards": "cli/shards", "runs/api/openai": "cli/openai"}
    for api_dir, cli_dir in pairs.items():
        assert digests(work / api_dir) == digests(work / cli_dir) != {}, api_dir


def test_trl_block_trains_on_our_shards_with_our_mask_and_documents(api_run: tuple[Path, dict[str, Any], str]) -> None:
    work, _, _ = api_run
    env, _ = run_block("Shards straight into TRL", work)
    trainer = env["trainer"]
    assert trainer.state.global_step == 2 and math.isfinite(trainer.state.log_history[-1]["train_loss"])

    shard = pl.concat([pl.read_parquet(p) for p in sorted((work / "runs/api/shards/train").glob("*.parquet"))])
    rows = [r for r in shard.to_dicts() if len(r["seq_lens"]) >= 2][:2]  # rows packing several documents
    batch = trainer.data_collator([env["to_trl"](r) for r in rows])
    cut = [sum(r["seq_lens"]) for r in rows]
    ids = np.concatenate([r["input_ids"][:n] for r, n in zip(rows, cut, strict=True)])
    mask = np.concatenate([r["loss_mask"][:n] for r, n in zip(rows, cut, strict=True)])
    positions = np.concatenate([r["position_ids"][:n] for r, n in zip(rows, cut, strict=True)])
    labels = batch["labels"][0].numpy()
    assert (batch["input_ids"][0].numpy() == ids).all() and (batch["position_ids"][0].numpy() == positions).all()
    assert ((labels != -100) == (mask == 1)).all() and (labels[mask == 1] == ids[mask == 1]).all()

    model = trainer.model.eval()
    first, second = rows[0]["seq_lens"][:2]
    with torch.no_grad():
        out = model(**batch)
        alone = model(input_ids=torch.tensor(ids[None, first : first + second]), use_cache=False).logits[0]
        leaky = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
    packed = out.logits[0, first : first + second]
    assert torch.allclose(packed, alone, atol=1e-4)  # the second document does not see the first
    assert not torch.allclose(leaky[first : first + second], alone, atol=1e-4)  # ...which a plain mask would show
    targets = torch.from_numpy(mask[1:] == 1)  # loss_mask[t]: token t is predicted from token t-1
    logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
    ours = -logp[torch.arange(len(ids) - 1), torch.from_numpy(ids[1:].astype(np.int64))][targets].mean()
    assert torch.allclose(out.loss, ours, atol=1e-5)  # TRL's loss is the mean over exactly our targets
