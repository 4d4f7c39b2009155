"""`build_shards`: kept records -> balanced, split, rendered, packed Parquet shards plus a manifest.

Layout (the trainer codes against it):

    OUT/manifest.json                 validated by schemas/manifest.schema.json
    OUT/records.parquet               every input record: id, group, split, status (packed or why not), tokens
    OUT/{train,eval,test}/part-NNNNN.parquet   rows of exactly seq_len tokens (see curator.format.pack)

Order of stages: render every record first (the balance budget and the before/after plot are in
real tokens), then balance, split, pack and write. Same inputs + config + seed give byte-identical
files: records are processed in id order, train rows are shuffled with the seed, and neither the
manifest nor the shards hold timestamps or absolute paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from curator.config import CurateConfig, config_hash
from curator.format.chat import UNCATEGORIZED, ChatFormatter, Encoded, load_tokenizer, tokenizer_hash
from curator.format.pack import Document, bfd_bins, pack_rows, split_document
from curator.format.split import SPLIT, record_sides
from curator.io import sha256_file, write_json, write_parquet
from curator.record import schema_errors
from curator.steps.balance import balance

SPLITS = ("train", "eval", "test")
MANIFEST_VERSION = 1


class ShardError(Exception):
    """Inputs that cannot be packed at all; the message says what is wrong and what to do."""


def read_kept(kept: Sequence[Path] | pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Kept records as one frame sorted by id; rows with a drop_reason and repeated ids are counted out."""
    if isinstance(kept, pl.DataFrame):
        df = kept
    else:
        paths = [Path(p) for p in kept]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ShardError(f"kept-record files not found: {', '.join(missing)}; run the curate stages first")
        if not paths:
            raise ShardError("no kept-record files given")
        df = pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")
    for col in ("id", "messages"):
        if col not in df.columns:
            raise ShardError(f"kept records lack the '{col}' column; expected curator.record.RECORD_SCHEMA columns")
    counts = {"input_rows": df.height}
    if "drop_reason" in df.columns:
        counts["skipped_dropped_rows"] = int(df["drop_reason"].is_not_null().sum())
        df = df.filter(pl.col("drop_reason").is_null())
    for col, dtype in (("category", pl.String), ("language", pl.String), ("cluster_id", pl.String)):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(col))
    n = df.height
    df = df.sort("id").unique(subset="id", keep="first", maintain_order=True)
    counts["duplicate_ids"] = n - df.height
    return df, counts


def progress_bar(enabled: bool) -> Progress:
    """A rich bar on stderr (disabled: no output), for the stages of pack and export."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _portable(value: Any) -> Any:
    """The config without absolute paths (file names only), so manifests match across machines."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name
    return value


def _token_counts(table: pa.Table, seq_len: int) -> dict[str, int]:
    """Total, trainable and padding tokens of packed rows."""
    total = table.num_rows * seq_len
    real = int(pc.sum(table["seq_lens"].combine_chunks().flatten()).as_py() or 0)
    trainable = int(pc.sum(table["loss_mask"].combine_chunks().flatten().cast(pa.int64())).as_py() or 0)
    return {"total": total, "trainable": trainable, "padding": total - real}


def _category_stats(docs: list[Document]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in docs:
        c = out.setdefault(d.category, {"documents": 0, "tokens": 0, "trainable_tokens": 0})
        c["documents"] += 1
        c["tokens"] += len(d.input_ids)
        c["trainable_tokens"] += int(d.loss_mask.sum())
    return dict(sorted(out.items()))


def _write_split(table: pa.Table, out_dir: Path, name: str, shard_rows: int) -> list[dict[str, Any]]:
    """Write `table` as part files of at most `shard_rows` rows; return their file entries."""
    split_dir = out_dir / name
    split_dir.mkdir(parents=True, exist_ok=True)
    for stale in split_dir.glob("part-*.parquet"):
        stale.unlink()
    files = []
    for k, start in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        if table.num_rows == 0:
            break
        part = table.slice(start, shard_rows)
        path = split_dir / f"part-{k:05d}.parquet"
        write_parquet(part, path)
        size, digest = path.stat().st_size, sha256_file(path)
        files.append({"path": f"{name}/{path.name}", "rows": part.num_rows, "bytes": size, "sha256": digest})
    return files


def build_shards(
    kept: Sequence[Path] | pl.DataFrame,
    out_dir: Path,
    cfg: CurateConfig,
    *,
    weights: dict[str, float] | None = None,
    progress: bool = True,
) -> dict:
    """Balance, split, render and pack kept records into shards under `out_dir`; return the manifest."""
    out_dir = Path(out_dir)
    fcfg = cfg.format
    df, input_counts = read_kept(kept)
    if df.height == 0:
        raise ShardError("no kept records to pack: every input row was dropped or the input is empty")
    tok, template_source = load_tokenizer(fcfg.tokenizer)
    fmt = ChatFormatter(tok, fcfg)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad_id is None:
        raise ShardError(f"tokenizer {fcfg.tokenizer} has neither a pad nor an EOS token; set one in its config")

    encoded: dict[str, Encoded] = {}
    status: dict[str, str] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("render + mask", total=df.height)
        for rid, result in fmt.encode_many(df.select("id", "messages", "context", "tools").iter_rows(named=True)):
            if isinstance(result, Encoded):
                encoded[rid] = result
            else:
                status[rid] = result.reason
            bar.advance(task)

    if not encoded:
        raise ShardError(
            f"none of the {df.height} kept records could be rendered ({fmt.stats.as_dict()['dropped']}); "
            f"check format.seq_len ({fcfg.seq_len}) and format.overlong, and that records have assistant turns"
        )
    lengths = {rid: (len(e.input_ids), int(e.loss_mask.sum())) for rid, e in encoded.items()}
    meta = df.select([c for c in ("id", "category", "language", "source", "cluster_id") if c in df.columns])
    if "meta" in df.columns:  # chat exports: samples of one session are split together
        meta = meta.with_columns(df["meta"].str.json_path_match("$.session").alias("session"))
    rendered = meta.filter(pl.col("id").is_in(list(encoded))).with_columns(
        pl.col("id").replace_strict({k: v[0] for k, v in lengths.items()}, return_dtype=pl.Int64).alias("n_tokens"),
    )
    # Split every kept record first (not only the rendered ones), so a record's side depends on the
    # data and the seed, never on the tokenizer or seq_len; then balance the train side only. The
    # eval/test sets stay the same whatever the weights: rounds of the feedback loop share one held-out set.
    sides = record_sides(meta, cfg.split, cfg.seed)
    split_all = rendered.join(sides, on="id", how="left")
    balanced = balance(split_all.filter(pl.col(SPLIT) == "train").drop(SPLIT), cfg.balance, cfg.seed, weights=weights)
    for rid, reason in balanced.dropped.select("id", "reason").iter_rows():
        status[rid] = reason
    split_frame = pl.concat(
        [balanced.selected.with_columns(pl.lit("train").alias(SPLIT)), split_all.filter(pl.col(SPLIT) != "train")],
        how="diagonal_relaxed",
    ).sort("id")

    splits_out: dict[str, Any] = {}
    categories_out: dict[str, Any] = {}
    split_of: dict[str, str] = {}
    totals = {"total": 0, "trainable": 0, "padding": 0}
    n_split_docs = 0
    with progress_bar(progress) as bar:
        active = [s for s in SPLITS if s != "test" or cfg.split.test_fraction > 0]
        task = bar.add_task("pack + write", total=len(active))
        for name in active:
            part = split_frame.filter(pl.col(SPLIT) == name)
            docs: list[Document] = []
            for rid, cat in part.select("id", "category").iter_rows():
                enc = encoded[rid]
                doc = Document(rid, cat or UNCATEGORIZED, enc.input_ids, enc.loss_mask)
                pieces = split_document(doc, fcfg.seq_len) if len(enc.input_ids) > fcfg.seq_len else [doc]
                n_split_docs += len(pieces) > 1
                docs.extend(pieces)
                split_of[rid] = name
                status[rid] = "packed"
            bins = bfd_bins([len(d.input_ids) for d in docs], fcfg.seq_len)
            table = pack_rows(docs, bins, fcfg.seq_len, pad_id)
            if name == "train" and table.num_rows > 1:
                table = table.take(np.random.default_rng(cfg.seed).permutation(table.num_rows))
            counts = _token_counts(table, fcfg.seq_len)
            for k in totals:
                totals[k] += counts[k]
            splits_out[name] = {
                "records": part.height,
                "documents": len(docs),
                "rows": table.num_rows,
                "tokens": counts,
                "packing_efficiency": _efficiency(counts),
                "files": _write_split(table, out_dir, name, fcfg.shard_rows),
            }
            categories_out[name] = _category_stats(docs)
            bar.advance(task)

    records_path = out_dir / "records.parquet"
    records = df.select("id", "category", "cluster_id").with_columns(
        pl.col("id").replace_strict(split_of, default=None, return_dtype=pl.String).alias(SPLIT),
        pl.col("id").replace_strict(status, default="unknown", return_dtype=pl.String).alias("status"),
        pl.col("id")
        .replace_strict({k: v[0] for k, v in lengths.items()}, default=None, return_dtype=pl.Int64)
        .alias("n_tokens"),
        pl.col("id")
        .replace_strict({k: v[1] for k, v in lengths.items()}, default=None, return_dtype=pl.Int64)
        .alias("n_trainable"),
        pl.col("id")
        .replace_strict({k: e.truncated_turns for k, e in encoded.items()}, default=None, return_dtype=pl.Int64)
        .alias("truncated_turns"),
    )
    write_parquet(records, records_path)
    status_counts = dict(sorted(records.group_by("status").len().iter_rows()))
    all_cats: dict[str, dict[str, int]] = {}
    for per_split in categories_out.values():
        for cat, c in per_split.items():
            acc = all_cats.setdefault(cat, {"documents": 0, "tokens": 0, "trainable_tokens": 0})
            for k in acc:
                acc[k] += c[k]

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "seed": cfg.seed,
        "seq_len": fcfg.seq_len,
        "pad_token_id": int(pad_id),
        "eos_token_id": None if tok.eos_token_id is None else int(tok.eos_token_id),
        "train_on": fcfg.train_on,
        "columns": [f.name for f in pack_rows([], [], fcfg.seq_len, pad_id).schema],
        "tokenizer": {
            "name": Path(str(fcfg.tokenizer)).name,
            "hash": tokenizer_hash(fcfg.tokenizer),
            "chat_template_hash": fmt.template_hash,
            "chat_template_source": template_source,
        },
        "tokens": totals,
        "packing_efficiency": _efficiency(totals),
        "splits": splits_out,
        "categories": dict(sorted(all_cats.items())),
        "categories_by_split": categories_out,
        "balance": balanced.report,
        "format": {**fmt.stats.as_dict(), "documents_split": n_split_docs, "split_documents": fcfg.split_documents},
        "records": {
            "file": records_path.name,
            "sha256": sha256_file(records_path),
            "count": df.height,
            "ids_sha256": hashlib.sha256("\n".join(df["id"].to_list()).encode()).hexdigest(),
            "status": status_counts,
            **input_counts,
        },
        "config": _portable(cfg.model_dump(mode="json")),
        "config_hash": config_hash(cfg),
    }
    problems = schema_errors(manifest, "manifest.schema.json")
    if problems:
        raise ShardError("manifest does not match schemas/manifest.schema.json: " + "; ".join(problems[:5]))
    write_json(manifest, out_dir / "manifest.json")
    return manifest


def _efficiency(counts: dict[str, int]) -> float:
    """Non-padding tokens / total tokens (1.0 for an empty split)."""
    return round((counts["total"] - counts["padding"]) / counts["total"], 6) if counts["total"] else 1.0


def summary_rows(manifest: dict) -> list[tuple[str, str]]:
    """(label, value) pairs for the CLI's summary table."""
    rows = [
        ("tokenizer", f"{manifest['tokenizer']['name']} ({manifest['tokenizer']['chat_template_source']})"),
        ("seq_len", str(manifest["seq_len"])),
        ("packing efficiency", f"{manifest['packing_efficiency']:.2%}"),
        ("tokens total / trainable / padding", "{total} / {trainable} / {padding}".format(**manifest["tokens"])),
    ]
    for name, s in manifest["splits"].items():
        rows.append((f"{name}: records / rows / files", f"{s['records']} / {s['rows']} / {len(s['files'])}"))
    for status, n in manifest["records"]["status"].items():
        rows.append((f"records {status}", str(n)))
    return rows
