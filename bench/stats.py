"""Small statistics for the bench: percentiles, summaries of rounds, ratios.

Invariants: pure functions over plain numbers; no I/O, no clocks. Percentiles use linear
interpolation between closest ranks (numpy's default "linear" method), so the p-th
percentile of 0..100 is p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0 <= p <= 100) of `values`; NaN when there are none."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return data[lo] + (data[hi] - data[lo]) * frac


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


@dataclass(frozen=True, slots=True)
class Summary:
    """The rounds of one (scenario, contender, metric): median and range."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        vals = [v for v in values if v is not None and not math.isnan(v)]
        if not vals:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(median(vals), min(vals), max(vals), len(vals))

    def as_dict(self) -> dict[str, float | int | None]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x
        return {"median": clean(self.median), "min": clean(self.low), "max": clean(self.high), "n": self.n}


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is zero."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def ratio_range(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """The widest range of a/b over the rounds' min and max (min(a)/max(b), max(a)/min(b))."""
    sa, sb = Summary.of(a), Summary.of(b)
    return ratio(sa.low, sb.high), ratio(sa.high, sb.low)


def fmt(x: float, digits: int = 3) -> str:
    """A number for a table: 3 significant digits, thousands kept whole; '—' when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax == 0:
        return "0"
    return f"{x:.{digits}g}"
