"""Generation metrics a person believes, and the noise of every mean the loop compares.

Per example, from the model's greedy answer and the reference answer of an eval record:
- `chrf`: character n-gram F-score (sacrebleu's chrF, Popović 2015), 0-1, for every answer;
- math answers whose reference ends in GSM8K's `#### n`: `exact_match` of the final number (the
  number after `####` in the answer, else its last number), commas and trailing zeros ignored;
- tool-call answers: `valid_json` (the answer holds a JSON object with a `name`, as in
  `<tool_call>{"name": ..., "arguments": ...}</tool_call>` or bare) and `right_name` (that name is
  the reference call's function name).
The kind of an answer follows from its reference (a tool call, a `####` answer, free text), never
from a category name. Which text the metrics read is the generation the model produced; tool-call
and number extraction are small regex/JSON rules no library offers for these formats.

`weighted_mean_se` is the standard error of a token-weighted mean of per-record values (the ratio
estimator), so the per-category loss the feedback steers on comes with its own noise; the same
function on paired differences of two evaluations of the same records gives the noise of a change.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
GSM8K_MARK = "####"


@lru_cache(maxsize=1)
def _chrf_metric() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(prediction: str, reference: str) -> float:
    """Sentence-level chrF in [0, 1] (sacrebleu's CHRF with its defaults: char 6-grams, beta 2)."""
    return _chrf_metric().sentence_score(prediction, [reference]).score / 100.0


def _normalise_number(text: str) -> str | None:
    text = text.replace(",", "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def final_number(text: str) -> str | None:
    """The answer's final number: what follows the last `####`, else the last number in the text."""
    if GSM8K_MARK in text:
        tail = text.rsplit(GSM8K_MARK, 1)[1]
        found = _NUMBER.search(tail)
        if found:
            return _normalise_number(found.group())
    numbers = _NUMBER.findall(text)
    return _normalise_number(numbers[-1]) if numbers else None


def parse_tool_call(text: str) -> dict[str, Any] | None:
    """The first JSON object with a string `name` in a generated answer (inside <tool_call> or bare), else None."""
    candidates = [m.group(1) for m in _TOOL_CALL.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        start = chunk.find("{")
        while start >= 0:
            try:
                value, _ = decoder.raw_decode(chunk, start)
            except ValueError:
                start = chunk.find("{", start + 1)
                continue
            if isinstance(value, dict):
                call = value.get("function") if isinstance(value.get("function"), dict) else value
                if isinstance(call.get("name"), str):
                    return call
            start = chunk.find("{", start + 1)
    return None


def reference_of(message: dict[str, Any]) -> tuple[str, str, str | None]:
    """(kind, reference text, reference tool name) of a canonical assistant message."""
    calls = message.get("tool_calls") or []
    if calls:
        first = calls[0]
        name = first.get("name") or (first.get("function") or {}).get("name")
        args = first.get("arguments")
        text = json.dumps({"name": name, "arguments": _json_or_text(args)}, ensure_ascii=False)
        return "tool_call", text, name
    content = message.get("content") or ""
    if GSM8K_MARK in content and final_number(content) is not None:
        return "final_number", content, None
    return "text", content, None


def _json_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def score_answer(kind: str, prediction: str, reference: str, tool_name: str | None = None) -> dict[str, Any]:
    """The metrics of one generated answer against its reference (see the module docstring)."""
    scores: dict[str, Any] = {"kind": kind, "chrf": round(chrf(prediction, reference), 6)}
    if kind == "final_number":
        predicted = final_number(prediction)
        scores["exact_match"] = float(predicted is not None and predicted == final_number(reference))
    elif kind == "tool_call":
        call = parse_tool_call(prediction)
        scores["valid_json"] = float(call is not None)
        scores["right_name"] = float(call is not None and call.get("name") == tool_name)
    return scores


def weighted_mean_se(values: Iterable[float], weights: Iterable[float] | None = None) -> tuple[float, float, int]:
    """(weighted mean, its standard error, n): the ratio estimator, s/sqrt(n) when the weights are equal.

    SE^2 = n / (n - 1) * sum w_i^2 (x_i - mean)^2 / (sum w_i)^2; with one value the SE is inf (no noise
    estimate), so nothing is ever decided on a single record.
    """
    xs = list(values)
    ws = [1.0] * len(xs) if weights is None else [float(w) for w in weights]
    n = len(xs)
    if n == 0:
        return math.nan, math.inf, 0
    total = sum(ws)
    mean = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    if n == 1:
        return mean, math.inf, 1
    var = n / (n - 1) * sum((w * (x - mean)) ** 2 for w, x in zip(ws, xs, strict=True)) / total**2
    return mean, math.sqrt(var), n


def summarise_generations(per_sample: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per category: n and mean ± SE of every metric its examples carry (records missing a metric skip it)."""
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for row in per_sample.values():
        by_cat.setdefault(row.get("category") or "uncategorized", []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for cat, rows in sorted(by_cat.items()):
        entry: dict[str, Any] = {"n": len(rows)}
        for metric in ("chrf", "exact_match", "valid_json", "right_name"):
            vals = [r[metric] for r in rows if metric in r]
            if vals:
                mean, se, _ = weighted_mean_se(vals)
                entry[metric] = round(mean, 6)
                entry[f"{metric}_se"] = round(se, 6) if math.isfinite(se) else None
        out[cat] = entry
    return out
