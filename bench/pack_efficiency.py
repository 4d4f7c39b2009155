"""Packing efficiency (non-padding tokens / total) of our BFD vs TRL's `bfd`, on a real mix, same run.

Data: six real sources from ../shared/data (see bench/pack_data.py: GSM8K, Code Alpaca, LLaMA-Factory
Alpaca demo, self-instruct, Glaive tool calls, FastChat + LLaMA-Factory chats), rendered with a
byte-level BPE (vocab 16k) trained here on the same mix, ChatML template. For each sequence length
the records are rendered once (overlong ones truncated by whole turns) and the *same* token lists go
to both packers. TRL rows are not padded, so their efficiency is tokens / (rows x seq_len), the
padding a fixed-length trainer would add. TRL packs per `datasets.map` batch (1000 by default); we
also run it with one batch holding everything, its best case.

    .venv/bin/python bench/pack_efficiency.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import Dataset
from pack_data import mix_table
from rich.console import Console
from rich.table import Table
from trl.data_utils import pack_dataset

from curator.config import FormatConfig
from curator.format.chat import ChatFormatter, Encoded, load_tokenizer
from curator.format.pack import bfd_bins
from curator.record import record_text
from trainer.tiny import train_tokenizer

SEQ_LENS = (512, 2048, 4096)


def build_tokenizer(records: list[dict], out: Path, vocab: int = 16384) -> Path:
    """A byte-level BPE trained on the mix itself (no download)."""
    return train_tokenizer((record_text(r) for r in records), out, vocab_size=vocab)


def trl_efficiency(lengths: list[int], seq_len: int, batch_size: int) -> tuple[float, int]:
    """Pack with TRL's bfd; return (tokens / (rows x seq_len), rows)."""
    ds = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    packed = pack_dataset(ds, seq_len, strategy="bfd", map_kwargs={"batch_size": batch_size})
    rows = packed.num_rows
    return sum(lengths) / (rows * seq_len), rows


def main() -> None:
    console = Console(width=170)
    records = mix_table().to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tok, _ = load_tokenizer(build_tokenizer(records, Path(tmp) / "tok"))
        console.print(f"{len(records)} records; tokenizer trained in {time.perf_counter() - t0:.1f}s")
        table = Table(title="Packing efficiency, real mix (non-padding / total tokens)")
        for col in (
            "seq_len",
            "docs",
            "tokens",
            "ours BFD",
            "rows",
            "TRL bfd (batch 1000)",
            "rows",
            "TRL bfd (one batch)",
            "rows",
            "ours s",
        ):
            table.add_column(col, justify="right")
        for seq_len in SEQ_LENS:
            fmt = ChatFormatter(tok, FormatConfig(seq_len=seq_len))
            lengths = [len(e.input_ids) for _, e in fmt.encode_many(records) if isinstance(e, Encoded)]
            t1 = time.perf_counter()
            bins = bfd_bins(lengths, seq_len)
            ours_s = time.perf_counter() - t1
            ours = sum(lengths) / (len(bins) * seq_len)
            trl_default, trl_rows = trl_efficiency(lengths, seq_len, 1000)
            trl_one, trl_one_rows = trl_efficiency(lengths, seq_len, len(lengths))
            table.add_row(
                str(seq_len),
                str(len(lengths)),
                str(sum(lengths)),
                f"{ours:.4%}",
                str(len(bins)),
                f"{trl_default:.4%}",
                str(trl_rows),
                f"{trl_one:.4%}",
                str(trl_one_rows),
                f"{ours_s:.2f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
