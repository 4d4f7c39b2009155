"""Packed Parquet shards -> checked, deterministically ordered, rank-sharded training batches.

Everything that can be wrong with the shards is checked before any long work: the manifest exists
and parses, every file exists with the sha256 and row count the manifest lists, rows are exactly
`seq_len` long, the tokenizer and chat-template hashes match the model's tokenizer, and `seq_len`
fits the model. Rows are held in memory as int32/int8 numpy arrays (9 bytes per token: ~18 GB for
a million rows of 2048 tokens; stream per shard if a pool ever outgrows that).

Order: an endless stream of per-epoch permutations seeded by (seed, epoch); global micro-step `j`
takes the next `micro_batch * world` rows of that stream and rank `r` takes its slice. So the data
position is a single integer (micro-steps done), a resumed run continues exactly, and 2 ranks x
micro 1 see the same rows as 1 rank x micro 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from curator.io import sha256_file

IGNORE_INDEX = -100
REQUIRED_COLUMNS = ("input_ids", "loss_mask", "position_ids", "seq_lens", "sample_ids", "categories")


class ShardError(Exception):
    """Shards or manifest are missing, corrupt or made for another tokenizer; the message says what to do."""


def model_tokenizer_hash(model: str | Path) -> str:
    """The packer's tokenizer hash (curator.format.chat.tokenizer_hash) of a local dir or hub model."""
    from curator.format.chat import tokenizer_hash

    if Path(model).is_dir():
        return tokenizer_hash(model)
    from transformers.utils import cached_file

    resolved = cached_file(str(model), "tokenizer.json", _raise_exceptions_for_missing_entries=False)
    return tokenizer_hash(Path(resolved).parent) if resolved else ""


def chat_template_hash(tokenizer: Any) -> str:
    """The packer's chat-template hash: sha256 of the template text (its built-in ChatML when there is none)."""
    from curator.format.chat import CHATML_TEMPLATE

    template = getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _same_hash(a: str, b: str) -> bool:
    """Hashes compare equal when one is a prefix of the other (16-char short vs full hex)."""
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


@dataclass
class PackedSplit:
    """One split of packed rows: token arrays [rows, seq_len] plus per-row document metadata."""

    name: str
    input_ids: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    seq_lens: list[list[int]] = field(default_factory=list)
    sample_ids: list[list[str]] = field(default_factory=list)
    categories: list[list[str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Parse `manifest.json` and check it has the keys the trainer relies on."""
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise ShardError(f"{path}: no manifest; point `shards` at the directory `curator curate` wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: manifest is not valid JSON ({exc}); re-run the packing step") from exc
    missing = [k for k in ("tokenizer", "seq_len", "splits") if k not in manifest]
    if missing:
        raise ShardError(f"{path}: manifest lacks {missing}; it was not written by this version of the packer")
    return manifest


def read_split(shard_dir: str | Path, manifest: dict[str, Any], split: str, verify: bool = True) -> PackedSplit:
    """Read every file of `split`, verifying checksum, row count, columns and row length first."""
    root = Path(shard_dir)
    seq_len = int(manifest["seq_len"])
    files = (manifest["splits"].get(split) or {}).get("files", [])
    tables = []
    for entry in files:
        path = root / entry["path"]
        if not path.is_file():
            raise ShardError(f"{path}: shard listed in the manifest is missing; re-run the packing step")
        if verify and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from the manifest (corrupt or replaced); re-run packing")
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ShardError(f"{path}: not a readable Parquet file ({exc}); re-run the packing step") from exc
        absent = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if absent:
            raise ShardError(f"{path}: columns {absent} are missing; shards must come from the packer")
        if "rows" in entry and table.num_rows != int(entry["rows"]):
            raise ShardError(f"{path}: {table.num_rows} rows but the manifest says {entry['rows']}")
        tables.append(table)
    if not tables:
        empty = np.zeros((0, seq_len), dtype=np.int32)
        return PackedSplit(split, empty, empty.astype(np.int8), empty.copy())
    arrays: dict[str, np.ndarray] = {}
    for col, dtype in (("input_ids", np.int32), ("loss_mask", np.int8), ("position_ids", np.int32)):
        parts = []
        for table, entry in zip(tables, files, strict=True):
            flat = table.column(col).combine_chunks()
            values = flat.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            if values.size != table.num_rows * seq_len:
                raise ShardError(f"{root / entry['path']}: `{col}` rows are not all {seq_len} tokens (seq_len)")
            parts.append(values.reshape(table.num_rows, seq_len))
        arrays[col] = np.concatenate(parts)
    meta = {c: [v for t in tables for v in t.column(c).to_pylist()] for c in ("seq_lens", "sample_ids", "categories")}
    return PackedSplit(split, arrays["input_ids"], arrays["loss_mask"], arrays["position_ids"], **meta)


def check_compatible(
    manifest: dict[str, Any], model: str | Path, tokenizer: Any, model_max: int | None, where: str
) -> None:
    """Refuse shards made with another tokenizer or chat template, or longer than the model allows."""
    tok = manifest["tokenizer"] if isinstance(manifest["tokenizer"], dict) else {"hash": str(manifest["tokenizer"])}
    ours = model_tokenizer_hash(model)
    if not _same_hash(str(tok.get("hash", "")), ours):
        raise ShardError(
            f"{where}: shards were tokenized with {tok.get('name')!r} (hash {str(tok.get('hash'))[:12]}) but "
            f"{model}'s tokenizer hashes to {ours[:12]}; re-pack with format.tokenizer set to this model, "
            "or train the model the shards were made for"
        )
    shard_template = str(tok.get("chat_template_hash") or manifest.get("chat_template_hash", ""))
    if not _same_hash(shard_template, chat_template_hash(tokenizer)):
        raise ShardError(
            f"{where}: shards were rendered with chat template {shard_template[:12]} but {model}'s tokenizer "
            f"has {chat_template_hash(tokenizer)[:12]}; re-pack with this model's tokenizer"
        )
    seq_len = int(manifest["seq_len"])
    if model_max is not None and seq_len > model_max:
        raise ShardError(
            f"{where}: seq_len {seq_len} exceeds the model's maximum of {model_max} positions; "
            f"re-pack with format.seq_len <= {model_max}"
        )


class RowOrder:
    """Endless, deterministic stream of row indices: one seeded permutation per epoch."""

    def __init__(self, rows: int, seed: int) -> None:
        self.rows = rows
        self.seed = seed
        self._epoch = -1
        self._perm = np.arange(0)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Row indices at stream positions (positions must not span more than one epoch boundary)."""
        out = np.empty(len(positions), dtype=np.int64)
        for i, pos in enumerate(positions.tolist()):
            epoch, offset = divmod(pos, self.rows)
            if epoch != self._epoch:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
                self._epoch = epoch
            out[i] = self._perm[offset]
        return out

    def micro_rows(self, micro_step: int, micro_batch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Rows this rank reads at global micro-step `micro_step`."""
        start = micro_step * micro_batch * world + rank * micro_batch
        return self.at(np.arange(start, start + micro_batch))


def shifted_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with the inputs: targets[t] = input_ids[t+1] when it is trainable.

    A target never crosses a document boundary (position t+1 must continue position t), so the first
    token of a document is never predicted from the previous document's last token.
    """
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    same_doc = position_ids[:, 1:] == position_ids[:, :-1] + 1
    keep = (loss_mask[:, 1:] == 1) & same_doc
    targets[:, :-1] = torch.where(keep, input_ids[:, 1:], IGNORE_INDEX)
    return targets


def document_index(position_ids: torch.Tensor) -> torch.Tensor:
    """Per token, the index of its document within the row (a new document wherever positions restart)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.long().cumsum(-1) - 1


def make_batch(split: PackedSplit, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors for one forward: input_ids, position_ids, targets, and the count of real (non-pad) tokens."""
    input_ids = torch.from_numpy(split.input_ids[rows].astype(np.int64))
    position_ids = torch.from_numpy(split.position_ids[rows].astype(np.int64))
    loss_mask = torch.from_numpy(split.loss_mask[rows])
    real = sum(sum(split.seq_lens[r]) for r in rows.tolist())
    return {
        "input_ids": input_ids.to(device),
        "position_ids": position_ids.to(device),
        "targets": shifted_targets(input_ids, loss_mask, position_ids).to(device),
        "real_tokens": torch.tensor(real),
    }


def prepare_run(cfg: Any) -> tuple[dict[str, Any], Any, PackedSplit, PackedSplit | None]:
    """All checks on shards vs model that need no weights: manifest, tokenizer, seq_len, splits."""
    from transformers import AutoConfig, AutoTokenizer

    from trainer.model import ModelLoadError, max_positions

    manifest = read_manifest(cfg.shards)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        model_config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {cfg.model!r}: cannot read its tokenizer/config: {exc}") from exc
    check_compatible(manifest, cfg.model, tokenizer, max_positions(model_config), cfg.shards)
    train_split = read_split(cfg.shards, manifest, "train")
    if train_split.rows == 0:
        raise ShardError(f"{cfg.shards}: the train split has no rows; check the curate step's report")
    eval_split = None
    if cfg.eval.enabled:
        eval_split = read_split(cfg.shards, manifest, "eval")
        if eval_split.rows == 0 or not (eval_split.loss_mask == 1).any():
            raise ShardError(
                f"{cfg.shards}: the eval split is empty; set split.eval_fraction > 0 when packing, "
                "or eval.enabled: false"
            )
    return manifest, tokenizer, train_split, eval_split
