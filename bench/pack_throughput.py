"""Tokenize + mask + pack throughput (tokens/s) and peak RSS on a large real-derived corpus.

Data: the real mix of bench/pack_data.py, replicated until the target token count is reached; each
replica k gets a one-line system turn ("Replica k.") so every record id stays distinct (no dedup
shortcut). Tokenizer: byte-level BPE (vocab 16k, a fast `tokenizers` backend) trained here on the
mix. Measured: ChatFormatter.encode_many (all prefix renders + tokenization + verification + masks)
and bfd_bins + pack_rows at seq_len 2048. Not measured: reading Parquet, balance/split, writing shards.

    .venv/bin/python bench/pack_throughput.py [target_tokens]    # default 50_000_000
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pack_data import mix_table
from pack_efficiency import build_tokenizer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from curator.config import FormatConfig
from curator.format.chat import ChatFormatter, Encoded, load_tokenizer
from curator.format.pack import Document, bfd_bins, pack_rows
from curator.record import message

SEQ_LEN = 2048


def main(target: int) -> None:
    console = Console(width=170)
    base = mix_table().to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        tok, _ = load_tokenizer(build_tokenizer(base, Path(tmp) / "tok"))
        fmt = ChatFormatter(tok, FormatConfig(seq_len=SEQ_LEN))
        docs: list[Document] = []
        tokens = 0
        replica = 0
        t0 = time.perf_counter()
        with Progress(
            TextColumn("render + mask"),
            BarColumn(),
            TextColumn("{task.completed:,} tokens"),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("tokens", total=target)
            while tokens < target:
                recs = [
                    {
                        **r,
                        "id": f"{r['id']}-{replica}",
                        "messages": [message("system", f"Replica {replica}."), *r["messages"]],
                    }
                    for r in base
                ]
                for rid, enc in fmt.encode_many(recs, chunk=512):
                    if isinstance(enc, Encoded):
                        docs.append(Document(rid, "c", enc.input_ids, enc.loss_mask))
                        tokens += len(enc.input_ids)
                        bar.update(task, completed=min(tokens, target))
                replica += 1
        t_render = time.perf_counter() - t0
        t1 = time.perf_counter()
        bins = bfd_bins([len(d.input_ids) for d in docs], SEQ_LEN)
        t_bins = time.perf_counter() - t1
        t2 = time.perf_counter()
        table = pack_rows(docs, bins, SEQ_LEN, tok.pad_token_id)
        t_rows = time.perf_counter() - t2
    total = t_render + t_bins + t_rows
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Table(title=f"Tokenize + pack throughput (seq_len {SEQ_LEN})")
    for col in ("stage", "seconds", "tokens/s"):
        out.add_column(col, justify="right")
    out.add_row("render + mask (tokenize)", f"{t_render:.1f}", f"{tokens / t_render:,.0f}")
    out.add_row("BFD bins", f"{t_bins:.1f}", f"{tokens / t_bins:,.0f}")
    out.add_row("row layout (Arrow)", f"{t_rows:.1f}", f"{tokens / t_rows:,.0f}")
    out.add_row("total", f"{total:.1f}", f"{tokens / total:,.0f}")
    console.print(out)
    console.print(
        f"records {len(docs):,} ({replica} replicas of {len(base):,}); tokens {tokens:,}; rows {table.num_rows:,}; "
        f"efficiency {tokens / (table.num_rows * SEQ_LEN):.4%}; mask methods {dict(fmt.stats.methods)}; "
        f"peak RSS {rss_mib:,.0f} MiB"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000_000)
