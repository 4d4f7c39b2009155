"""Format + pack: chat rendering with loss masks, balance, group-aware split, packing, shards + manifest."""

from curator.format.shards import build_shards, summary_rows

__all__ = ["build_shards", "summary_rows"]
