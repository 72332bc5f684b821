"""Summaries of repeated measurements: pure functions over plain numbers.

Nothing here knows about pytest, Ollama or the network, so every figure the
plugin reports can be checked with literal numbers in a unit test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as _scipy_stats

#: Confidence level of the intervals shown in reports and saved in JSON.
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """Location and spread of one quantity measured several times.

    ``ci_low``/``ci_high`` is a Student-t confidence interval of the mean at
    ``confidence``; it and ``stdev`` are ``None`` below two values, because one
    value says nothing about spread.
    """

    n: int
    median: float
    mean: float
    stdev: float | None
    minimum: float
    maximum: float
    ci_low: float | None
    ci_high: float | None
    confidence: float

    @classmethod
    def from_values(
        cls, values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
    ) -> Summary:
        if not values:
            raise ValueError("cannot summarise an empty list of values")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
        data = sorted(float(v) for v in values)
        n = len(data)
        mean = math.fsum(data) / n
        half = n // 2
        median = data[half] if n % 2 else (data[half - 1] + data[half]) / 2.0
        if n < 2:
            return cls(n, median, mean, None, data[0], data[-1], None, None, confidence)
        variance = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
        stdev = math.sqrt(variance)
        t = float(_scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1))
        half_width = t * stdev / math.sqrt(n)
        return cls(
            n,
            median,
            mean,
            stdev,
            data[0],
            data[-1],
            mean - half_width,
            mean + half_width,
            confidence,
        )

    @property
    def relative_stdev(self) -> float | None:
        """Coefficient of variation: stdev / mean, ``None`` when undefined."""
        if self.stdev is None or self.mean == 0:
            return None
        return self.stdev / self.mean

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero."""
    if denominator == 0:
        return None
    return numerator / denominator
