"""A self-contained HTML page (inline CSS, plots as embedded PNG) from sections of tables and figures.

Shared by the curation report and the loop report. Every value is escaped; plots are rendered with
matplotlib's Agg backend and fixed metadata so the same data gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17803d;font-weight:600}.bad{color:#b42318;font-weight:600}.note{color:#555;font-size:.9rem}
img{max-width:100%}
"""


def figure_png(fig: plt.Figure) -> str:
    """Render a matplotlib figure to a base64 PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def bar_chart(title: str, series: dict[str, dict[str, float]], xlabel: str = "", top: int = 20) -> str:
    """Grouped horizontal bars: one group per key, one bar per series (e.g. before/after)."""
    keys: list[str] = []
    for values in series.values():
        for k in sorted(values, key=lambda k: -values[k]):
            if k not in keys:
                keys.append(k)
    keys = keys[:top]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(keys) + 1.2))
    height = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.barh([j + i * height for j in range(len(keys))], [values.get(k, 0) for k in keys], height, label=name)
    ax.set_yticks([j + height * (len(series) - 1) / 2 for j in range(len(keys))], keys)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if len(series) > 1:
        ax.legend()
    return figure_png(fig)


def binned_histogram(title: str, edges: Sequence[float], series: dict[str, Sequence[int]], xlabel: str) -> str:
    """Overlaid step histograms of pre-binned counts on a log x axis (e.g. tokens per record, kept vs dropped)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    drawn = [*edges[:-1], edges[-2] * 2]  # the open last bin is drawn as one more doubling
    for name, counts in series.items():
        if sum(counts):
            ax.stairs(list(counts), drawn, fill=True, alpha=0.5, label=f"{name} ({sum(counts)})")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend()
    return figure_png(fig)


def line_chart(title: str, series: dict[str, Sequence[float]], xlabel: str, ylabel: str) -> str:
    """One line per series over a shared integer x axis (rounds, steps)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for name, values in series.items():
        ax.plot(range(len(values)), list(values), marker="o" if len(values) < 30 else None, label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return figure_png(fig)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; numbers right-aligned."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            cls = ' class="n"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def page(title: str, sections: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The whole page: a title, then (heading, [html fragments]) sections; PNGs given as 'png:<b64>'."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, fragments in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for frag in fragments:
            if frag.startswith("png:"):
                parts.append(f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{frag[4:]}'>")
            else:
                parts.append(frag)
    parts.append("</body></html>")
    return "\n".join(parts)


def paragraph(text: str, cls: str = "") -> str:
    """An escaped paragraph, optionally with a CSS class (ok, bad, note)."""
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{html.escape(text)}</p>"
