"""Best-fit-decreasing packing of documents into fixed-length rows that keep documents apart.

Each row is exactly `seq_len` tokens: documents laid end to end, then padding. `position_ids`
restart at 0 at every document (padding counts on 0..k as one pad "document"), `seq_lens` lists the
document lengths (padding excluded) and `sample_ids`/`categories` name each document's record, so a
model fed `position_ids` with no 2D attention mask attends within documents only (flash/varlen
style) and every token traces back to its record.

The bin search is hand-written because no maintained library packs to a bound with a deterministic
tie-break; TRL's `_pack_bfd` is private, works per `map` batch and leaves the last row short. Here a
sorted list of the distinct free spaces (at most `seq_len` values) finds the tightest bin with one
bisect, and bins with equal space are used first-opened-first, so the result depends only on the
lengths and their order.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

ROW_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
        ("position_ids", pa.list_(pa.int32())),
        ("seq_lens", pa.list_(pa.int32())),
        ("sample_ids", pa.list_(pa.string())),
        ("categories", pa.list_(pa.string())),
    ]
)


@dataclass
class Document:
    """One packable unit: a rendered record (or a piece of one when documents may be split)."""

    sample_id: str
    category: str
    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # int8


def bfd_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into bins of at most `capacity` tokens.

    Items go in order of decreasing length (ties: lower index first); each goes into the open bin
    with the least free space that still fits it, else into a new bin. Bins come out in opening order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    spaces: list[int] = []  # sorted distinct free spaces of open bins
    by_space: dict[int, deque[int]] = {}
    for i in order:
        n = lengths[i]
        if n > capacity or n <= 0:
            raise ValueError(f"document {i} has {n} tokens; packing needs 1..{capacity}")
        pos = bisect.bisect_left(spaces, n)
        if pos < len(spaces):
            space = spaces[pos]
            queue = by_space[space]
            b = queue.popleft()
            if not queue:
                del by_space[space]
                spaces.pop(pos)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = space - n
        if left > 0:
            if left not in by_space:
                by_space[left] = deque()
                bisect.insort(spaces, left)
            by_space[left].append(b)
    return bins


def split_document(doc: Document, seq_len: int) -> list[Document]:
    """Cut a document longer than `seq_len` into consecutive pieces (only when the user asks for it)."""
    return [
        Document(doc.sample_id, doc.category, doc.input_ids[i : i + seq_len], doc.loss_mask[i : i + seq_len])
        for i in range(0, len(doc.input_ids), seq_len)
    ]


def pack_rows(docs: Sequence[Document], bins: Sequence[Sequence[int]], seq_len: int, pad_id: int) -> pa.Table:
    """Lay out `bins` of `docs` as rows of exactly `seq_len` tokens with the shard columns."""
    n_rows = len(bins)
    order = [i for b in bins for i in b]
    doc_lens = np.fromiter((len(docs[i].input_ids) for i in order), dtype=np.int64, count=len(order))
    docs_per_row = np.fromiter((len(b) for b in bins), dtype=np.int64, count=n_rows)
    used = np.add.reduceat(doc_lens, np.r_[0, np.cumsum(docs_per_row)[:-1]]) if n_rows else doc_lens[:0]
    pads = seq_len - used
    # Segments per row: its documents, then one pad segment (possibly empty).
    seg_lens = np.empty(len(order) + n_rows, dtype=np.int64)
    is_pad = np.zeros(len(order) + n_rows, dtype=bool)
    pad_pos = np.cumsum(docs_per_row + 1) - 1
    is_pad[pad_pos] = True
    seg_lens[~is_pad] = doc_lens
    seg_lens[is_pad] = pads
    ids = np.full(n_rows * seq_len, pad_id, dtype=np.int32)
    mask = np.zeros(n_rows * seq_len, dtype=np.int8)
    seg_starts = np.cumsum(seg_lens) - seg_lens
    if order:
        within = np.arange(int(doc_lens.sum())) - np.repeat(np.cumsum(doc_lens) - doc_lens, doc_lens)
        flat_idx = np.repeat(seg_starts[~is_pad], doc_lens) + within
        ids[flat_idx] = np.concatenate([docs[i].input_ids for i in order])
        mask[flat_idx] = np.concatenate([docs[i].loss_mask for i in order])
    positions = (np.arange(n_rows * seq_len) - np.repeat(seg_starts, seg_lens)).astype(np.int32)
    row_offsets = np.arange(n_rows + 1, dtype=np.int32) * seq_len
    doc_offsets = np.r_[0, np.cumsum(docs_per_row)].astype(np.int32)
    return pa.Table.from_arrays(
        [
            pa.ListArray.from_arrays(row_offsets, pa.array(ids, pa.int32())),
            pa.ListArray.from_arrays(row_offsets, pa.array(mask, pa.int8())),
            pa.ListArray.from_arrays(row_offsets, pa.array(positions, pa.int32())),
            pa.ListArray.from_arrays(doc_offsets, pa.array(doc_lens.astype(np.int32), pa.int32())),
            pa.ListArray.from_arrays(doc_offsets, pa.array([docs[i].sample_id for i in order], pa.string())),
            pa.ListArray.from_arrays(doc_offsets, pa.array([docs[i].category for i in order], pa.string())),
        ],
        schema=ROW_SCHEMA,
    )
