"""Summaries of repeated measurements: pure functions over plain numbers.

Nothing here knows about pytest, Ollama or the network, so every figure the
plugin reports can be checked with literal numbers in a unit test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.special import stdtrit as _stdtrit


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (``scipy.stats.t.ppf``, through the much cheaper ufunc)."""
    return float(_stdtrit(df, q))


def format_interval(low: float, high: float, digits: int = 2) -> str:
    """``0.45-0.49``; ``-55.2 to 172.9`` once a bound is negative, so the sign reads."""
    separator = " to " if low < 0 or high < 0 else "-"
    return f"{low:.{digits}f}{separator}{high:.{digits}f}"


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
        t = t_quantile(0.5 + confidence / 2.0, n - 1)
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


def mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean, ``None`` for no values."""
    return math.fsum(values) / len(values) if values else None


def geometric_mean(values: Sequence[float]) -> float | None:
    """exp(mean(log v)): the centre a ratio of throughputs is taken between; the
    arithmetic mean where a value is not positive, ``None`` for no values."""
    if not values or min(values) <= 0:
        return mean(values)
    return math.exp(math.fsum(math.log(v) for v in values) / len(values))


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero."""
    if denominator == 0:
        return None
    return numerator / denominator


# -- one-sided bounds for the verdicts ------------------------------------------
#
# A verdict needs two one-sided bounds at confidence 1 - alpha each: below the
# lower bound the true value is unlikely, and so above the upper. Together they
# form a two-sided interval at 1 - 2 * alpha.


@dataclass(frozen=True)
class Bounds:
    estimate: float
    low: float
    high: float


def mean_bounds(values: Sequence[float], alpha: float) -> Bounds | None:
    """Student-t bounds of the mean of ``values``; ``None`` below two values."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    t = t_quantile(1.0 - alpha, n - 1)
    half = t * math.sqrt(var / n)
    return Bounds(mean, mean - half, mean + half)


def ratio_bounds(
    numerator: Sequence[float], denominator: Sequence[float], alpha: float
) -> Bounds | None:
    """Bounds of the ratio of two positive quantities' geometric means.

    Throughput ratios are not normal, but the logarithm of a throughput is close
    to it, and a ratio becomes a difference of logs: Welch's t on the logs (two
    independent samples, unequal variances, Welch-Satterthwaite degrees of
    freedom), transformed back with exp. ``None`` below two values a side or
    for a non-positive value.
    """
    if min(numerator, default=0) <= 0 or min(denominator, default=0) <= 0:
        return None
    welch = _welch([math.log(v) for v in numerator], [math.log(v) for v in denominator])
    if welch is None:
        return None
    diff, se, df = welch
    half = 0.0 if se == 0 else t_quantile(1.0 - alpha, df) * se
    return Bounds(_exp(diff), _exp(diff - half), _exp(diff + half))


def _exp(x: float) -> float:
    """exp, but inf instead of OverflowError: two wild samples and a small alpha give a
    log-scale bound far beyond a float's range, and an unbounded interval is the truth."""
    return math.inf if x > 709.0 else math.exp(x)


def spent_alpha(alpha: float, look: int, looks: int) -> float:
    """Share of ``alpha`` spent at ``look`` (1-based) of ``looks`` planned looks.

    Looking at the data again after more samples gives noise another chance to
    cross a threshold. The shares follow the spending function alpha * t**2
    (t: fraction of looks done) and add up to ``alpha`` over all looks, so by the
    union bound the chance of any false verdict over the whole sequence stays
    within ``alpha``. Early looks get little, so a clear answer still stops
    early while the last look keeps most of the budget.
    """
    if not 1 <= look <= looks:
        raise ValueError(f"look {look} is not between 1 and {looks}")
    return alpha * ((look / looks) ** 2 - ((look - 1) / looks) ** 2)


@dataclass(frozen=True)
class Shift:
    """How a quantity moved between two runs, with one-sided bounds at 1 - alpha.

    ``p_value`` is that of the one-sided test whose null hypothesis is "the
    drop is no larger than the margin": small means the drop is shown to be
    larger.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    #: standard error and degrees of freedom of the difference (of logs, for a ratio)
    se: float = 0.0
    df: float = 1.0


def detectable_drop(
    shift: Shift, margin: float, alpha: float, relative: bool, power: float = 0.9
) -> float:
    """The true drop a test like ``shift``'s shows larger than ``margin`` with probability
    ``power``, at its samples' spread: what the gate could have caught.

    The test flags a drop when the upper bound, estimate + t(1 - alpha) * se, lies
    below the margin; a true difference d gives that with probability ``power`` when
    d = margin - (t(1 - alpha) + t(power)) * se (on logs for a relative rule).
    """
    reach = (t_quantile(1.0 - alpha, shift.df) + t_quantile(power, shift.df)) * shift.se
    if relative:
        return 1.0 - _exp(math.log(1.0 - margin) - reach)
    return margin + reach


def stdev(values: Sequence[float], log: bool = False) -> float | None:
    """The sample standard deviation (of the logs, for ``log``); ``None`` below two
    values, or for ``log`` with a value that is not positive."""
    if len(values) < 2 or (log and min(values) <= 0):
        return None
    data = [math.log(v) for v in values] if log else list(values)
    centre = math.fsum(data) / len(data)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in data) / (len(data) - 1))


def spread_upper_factor(n: int, confidence: float = 0.9) -> float:
    """s * this is the upper ``confidence`` bound of a standard deviation estimated as
    s from ``n`` normal values: sqrt((n - 1) / chi2 quantile(1 - confidence, n - 1))."""
    from scipy.special import chdtri

    if n < 2:
        return math.inf
    return math.sqrt((n - 1) / float(chdtri(n - 1, confidence)))


def _welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean a - mean b, standard error, degrees of freedom), or None below 2 a side."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = math.fsum(a) / na, math.fsum(b) / nb
    va = math.fsum((x - ma) ** 2 for x in a) / (na - 1)
    vb = math.fsum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        return ma - mb, 0.0, float(na + nb - 2)
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return ma - mb, math.sqrt(se2), df


def _shift(
    diff: float, se: float, df: float, margin: float, alpha: float
) -> tuple[float, float, float]:
    """(low, high, p) of a one-sided test that ``diff`` lies below ``margin``."""
    from scipy.special import stdtr

    if se == 0:
        return diff, diff, 0.0 if diff < margin else 1.0
    t = t_quantile(1.0 - alpha, df)
    p = float(stdtr(df, (diff - margin) / se))
    return diff - t * se, diff + t * se, p


def relative_shift(
    new: Sequence[float], old: Sequence[float], max_drop: float, alpha: float
) -> Shift | None:
    """new / old as a ratio of geometric means (Welch on logs); tests ratio < 1 - max_drop."""
    if min(new, default=0) <= 0 or min(old, default=0) <= 0:
        return None
    welch = _welch([math.log(v) for v in new], [math.log(v) for v in old])
    if welch is None or max_drop >= 1:
        return None
    diff, se, df = welch
    low, high, p = _shift(diff, se, df, math.log(1.0 - max_drop), alpha)
    return Shift(_exp(diff), _exp(low), _exp(high), p, se, df)


def absolute_shift(
    new: Sequence[float], old: Sequence[float], max_drop: float, alpha: float
) -> Shift | None:
    """mean(new) - mean(old) (Welch's t); tests difference < -max_drop."""
    welch = _welch(list(new), list(old))
    if welch is None:
        return None
    diff, se, df = welch
    low, high, p = _shift(diff, se, df, -max_drop, alpha)
    return Shift(diff, low, high, p, se, df)
