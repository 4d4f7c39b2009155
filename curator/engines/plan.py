"""The curation pipeline: which steps run, in which order, and how the run is accounted for.

`build_steps` turns a config into the ordered step list; `phases` groups consecutive map steps so an
engine runs them in one pass. The engines (`curator.engines`) execute the phases; this module owns
the vocabulary they share: the work-dir layout, the decision, and the accounting that proves
`read = kept + dropped + quarantined`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curator.config import CurateConfig
from curator.steps.base import DROP_REASON, GlobalStep, MapStep, Rule, Step

ROW_SHIFT = 40  # row = (input index << 40) | position in input: unique and stable across runs


class ResumeMismatch(Exception):
    """The output dir holds a run made with other settings; the message says what to do."""


def build_steps(cfg: CurateConfig) -> list[Step]:
    """The configured steps in pipeline order; optional ones are imported only when enabled."""
    from curator.steps.normalize import Normalize
    from curator.steps.quality import Language, Quality

    steps: list[Step] = [Normalize(), Quality(cfg.quality), Language(cfg.quality)]
    if cfg.dedup.exact.enabled or cfg.dedup.minhash.enabled or cfg.dedup.semantic.enabled:
        from curator.steps import dedup

        steps.extend(dedup.dedup_steps(cfg.dedup))
    if cfg.decontam.benchmarks:
        from curator.steps.decontam import Decontaminate

        steps.append(Decontaminate(cfg.decontam))
    if cfg.pii.enabled:
        from curator.steps.pii import PiiScrub

        steps.append(PiiScrub(cfg.pii, seed=cfg.seed))
    return steps


@dataclass
class Phase:
    """One pass over the data: a run of map steps, or a single global step."""

    index: int
    steps: list[Step]
    rules_before: list[Rule]  # every rule of earlier phases: decides which rows are still kept

    @property
    def is_global(self) -> bool:
        return isinstance(self.steps[0], GlobalStep) and not isinstance(self.steps[0], MapStep)

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.steps)


def phases(steps: list[Step]) -> list[Phase]:
    """Group consecutive map steps with the same `only_kept` into one phase; each global step is its own."""
    out: list[Phase] = []
    rules: list[Rule] = []
    for step in steps:
        is_map = isinstance(step, MapStep)
        last = out[-1] if out else None
        if (
            is_map
            and last is not None
            and not last.is_global
            and last.steps[-1].only_kept == step.only_kept
        ):
            last.steps.append(step)
        else:
            out.append(Phase(len(out), [step], list(rules)))
        rules.extend(step.rules())
    return out


def rule_owners(steps: list[Step]) -> dict[str, str]:
    """Which step owns each drop reason, for the per-step table of the report."""
    owners: dict[str, str] = {}
    for step in steps:
        for rule in step.rules():
            owners.setdefault(rule.reason, step.name)
    return owners


def all_rules(steps: list[Step]) -> list[Rule]:
    """Every rule in pipeline order: the first that matches a row names its drop reason."""
    return [rule for step in steps for rule in step.rules()]


@dataclass
class Accounting:
    """Counts that must reconcile: every record read is kept, dropped with a reason, or quarantined."""

    read: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    quarantine_reasons: Counter[str] = field(default_factory=Counter)
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # chat exports: message accounting by input

    @property
    def total_read(self) -> int:
        return sum(self.read.values())

    def check(self) -> None:
        """Raise if the counts do not reconcile: that would be a bug that lost or invented records."""
        total = self.kept + sum(self.dropped.values()) + sum(self.quarantined.values())
        if total != self.total_read:
            raise AssertionError(
                f"accounting does not reconcile: read {self.total_read} != kept {self.kept} + dropped "
                f"{sum(self.dropped.values())} + quarantined {sum(self.quarantined.values())}"
            )
        for path, m in self.messages.items():
            if m["read"] != m["in_sample"] + m["context_only"] + sum(m["dropped"].values()):
                raise AssertionError(f"{path}: message accounting does not reconcile: {m}")

    def as_dict(self) -> dict[str, Any]:
        out = {
            "read": self.total_read,
            "kept": self.kept,
            "dropped": sum(self.dropped.values()),
            "quarantined": sum(self.quarantined.values()),
            "reconciles": True,
            "read_by_input": dict(sorted(self.read.items())),
            "quarantined_by_input": dict(sorted(self.quarantined.items())),
            "quarantined_by_reason": dict(self.quarantine_reasons.most_common()),
            "dropped_by_reason": dict(self.dropped.most_common()),
        }
        if self.messages:
            out["messages"] = message_totals(self.messages)
        return out


def message_totals(by_input: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Message accounting of the chat exports: per input and summed (read = in sample + context + dropped)."""
    total: dict[str, Any] = {"read": 0, "in_sample": 0, "context_only": 0, "dropped": Counter(), "samples": 0}
    for m in by_input.values():
        for key in ("read", "in_sample", "context_only", "samples"):
            total[key] += m[key]
        total["dropped"].update(m["dropped"])
    total["dropped"] = dict(total["dropped"].most_common())
    return {**total, "reconciles": True, "by_input": dict(sorted(by_input.items()))}


def kept_mask(frame: pl.DataFrame) -> pl.Series:
    """True for rows with no drop reason yet."""
    if DROP_REASON not in frame.columns:
        return pl.Series([True] * frame.height, dtype=pl.Boolean)
    return frame[DROP_REASON].is_null()
