"""The two kinds of step, and the rule that turns annotations into drop reasons.

A step never deletes a row. A `MapStep` returns its batch with columns added (or text columns
rewritten, for scrubbing); a `GlobalStep` maps each batch to a partial result and reduces all
partials to an annotation table keyed by `row`. Each step lists its `rules`: (reason, predicate)
pairs over its own columns, read from the config when the step is built. The decision applies
them in pipeline order; the first rule that matches names the row's `drop_reason`. Engines
(local, Ray) only call these methods, so a step does not know where it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import polars as pl

ROW = "row"  # unique, deterministic row key assigned at ingest: (input index << 40) | position
DROP_REASON = "drop_reason"
DROP_DETAIL = "drop_detail"


@dataclass(frozen=True)
class Rule:
    """Drop a row with `reason` when `when` is true; `detail` (optional) explains the instance."""

    reason: str
    when: pl.Expr
    detail: pl.Expr | None = None


@runtime_checkable
class MapStep(Protocol):
    """A per-batch step: same rows in, same rows out, with annotation columns added."""

    name: str
    only_kept: bool  # True: run only on rows no earlier rule dropped (e.g. PII after dedup)

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame: ...

    def rules(self) -> list[Rule]: ...


@runtime_checkable
class GlobalStep(Protocol):
    """A step that needs the whole dataset: a map over batches, then one reduce."""

    name: str
    only_kept: bool

    def map(self, batch: pl.DataFrame) -> pl.DataFrame: ...

    def reduce(self, partials: Iterable[pl.DataFrame]) -> pl.DataFrame:
        """Combine the partials into one table: `row` plus this step's annotation columns."""
        ...

    def rules(self) -> list[Rule]: ...


Step = MapStep | GlobalStep


def decide(batch: pl.DataFrame, rules: list[Rule]) -> pl.DataFrame:
    """Set `drop_reason`/`drop_detail` from the first matching rule; rows already dropped keep theirs."""
    reason = pl.col(DROP_REASON) if DROP_REASON in batch.columns else pl.lit(None, dtype=pl.String)
    detail = pl.col(DROP_DETAIL) if DROP_DETAIL in batch.columns else pl.lit(None, dtype=pl.String)
    new_reason: pl.Expr = pl.lit(None, dtype=pl.String)
    new_detail: pl.Expr = pl.lit(None, dtype=pl.String)
    for rule in reversed(rules):
        when = rule.when.fill_null(False)
        new_reason = pl.when(when).then(pl.lit(rule.reason)).otherwise(new_reason)
        rule_detail = rule.detail.cast(pl.String) if rule.detail is not None else pl.lit(None, dtype=pl.String)
        new_detail = pl.when(when).then(rule_detail).otherwise(new_detail)
    return batch.with_columns(
        pl.coalesce(reason, new_reason).alias(DROP_REASON),
        pl.when(reason.is_not_null()).then(detail).otherwise(new_detail).alias(DROP_DETAIL),
    )
