"""The packing report: the mix before and after balancing, and what the shards hold, as one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curator.io import write_text
from curator.report import html as H


def write_pack_report(manifest: dict[str, Any], rows: list[tuple[str, str]], out: Path) -> Path:
    """Write `pack_report.html` beside the manifest: balance before/after plots and the summary rows."""
    bal = manifest["balance"]
    tokens = {"before": {g: v["tokens"] for g, v in bal["before"].items()},
              "after": {g: v["tokens"] for g, v in bal["after"].items()}}
    records = {"before": {g: v["records"] for g, v in bal["before"].items()},
               "after": {g: v["records"] for g, v in bal["after"].items()}}
    weights = [[g, w, bal["quotas_tokens"].get(g, 0)] for g, w in bal["weights_used"].items()]
    sections = [
        ("Shards", [H.table(["", ""], rows)]),
        (f"Balance by {bal['by']} (train side; weights from {bal['share_source']})", [
            "png:" + H.bar_chart("Tokens per group, before and after balancing", tokens, "tokens"),
            "png:" + H.bar_chart("Records per group, before and after balancing", records, "records"),
            H.table(["group", "weight", "quota (tokens)"], weights),
        ]),
    ]
    path = out / "pack_report.html"
    write_text(H.page("Packing report", sections), path)
    return path
