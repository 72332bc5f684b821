"""Summaries of repeated measurements: pure functions over plain numbers.

Nothing here knows about pytest, Ollama or the network, so every figure the
plugin reports can be checked with literal numbers in a unit test.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# scipy is imported where it is used, not here: importing scipy.special costs 0.2-0.5 s,
# and every pytest run in a project with the plugin installed imports this module,
# with --ollama-cpu or without (issue 15).


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (``scipy.stats.t.ppf``, through the much cheaper ufunc)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


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
    to it, and a ratio becomes a difference of logs (two independent samples,
    unequal variances: ``Difference``), transformed back with exp. ``None`` below
    two values a side or for a non-positive value.
    """
    if min(numerator, default=0) <= 0 or min(denominator, default=0) <= 0:
        return None
    d = difference([math.log(v) for v in numerator], [math.log(v) for v in denominator])
    if d is None:
        return None
    half = d.quantile(1.0 - alpha) * d.se
    return Bounds(_exp(d.estimate), _exp(d.estimate - half), _exp(d.estimate + half))


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
    #: the difference the test read (of logs, for a ratio): standard error and shape
    error: Difference | None = None


def detectable_drop(
    shift: Shift, margin: float, alpha: float, relative: bool, power: float = 0.9
) -> float:
    """The true drop a test like ``shift``'s shows larger than ``margin`` with probability
    ``power``, at its samples' spread: what the gate could have caught.

    The test flags a drop when the upper bound, estimate + q(1 - alpha) * se, lies
    below the margin; a true difference d gives that with probability ``power`` when
    d = margin - (q(1 - alpha) + q(power)) * se (on logs for a relative rule), q the
    quantiles of the difference's ``Difference`` distribution.
    """
    error = shift.error
    reach = (
        0.0 if error is None else (error.quantile(1.0 - alpha) + error.quantile(power)) * error.se
    )
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


# -- the difference of two means, spreads unequal (Behrens-Fisher) ---------------
#
# Welch's t with Welch-Satterthwaite degrees of freedom is too liberal at the
# tiny alphas the plugin spends when the two sides' spreads differ (1% vs 7% at
# 5 samples a side: 1.7 x alpha at 0.001, 2 x at 0.0002), because the degrees of
# freedom are estimated from the same noisy variances. The Behrens-Fisher
# distribution does not estimate them: (difference - truth) / se is taken as
# sqrt(w) * T_a + sqrt(1 - w) * T_b, with T_a, T_b Student t on each side's
# degrees of freedom and w the share of the variance that comes from side a.
# Its tests keep within alpha at every ratio of spreads (Robinson 1976), at the
# cost of wider intervals when the spreads are equal and the samples few
# (benchmarks/gate_power.py measures both).

_GRID_U = np.linspace(-math.pi / 2, math.pi / 2, 501)[1:-1]
_GRID_Y = np.tan(_GRID_U)
_GRID_WEIGHT = (1.0 + _GRID_Y**2) * (_GRID_U[1] - _GRID_U[0])


@functools.lru_cache(maxsize=256)
def _t_density(df: float) -> np.ndarray:
    """Student's t density on the grid, times the grid's weights."""
    result: np.ndarray = np.exp(_t_log_density(_GRID_Y, df)) * _GRID_WEIGHT
    return result


def _t_log_density(y: np.ndarray, df: float) -> np.ndarray:
    with np.errstate(over="ignore"):  # far out, y * y is inf: the density is 0
        result: np.ndarray = _t_log_norm(df) - (df + 1) / 2 * np.log1p(y * y / df)
    return result


def _grid_z(x: float, share: float) -> tuple[float, np.ndarray]:
    """W = a * T_a + b * T_b exceeds x where T_a > z, z over the grid of T_b values."""
    a, b = math.sqrt(share), math.sqrt(1.0 - share)
    with np.errstate(over="ignore"):  # a tiny a sends z to inf, where T_a's tail is 0
        return a, (x - b * _GRID_Y) / a


def _sf_and_density(x: float, share: float, df_a: float, df_b: float) -> tuple[float, float]:
    """P(W > x) and W's density at x, W = sqrt(share) * T_a + sqrt(1 - share) * T_b: an
    integral over T_b (tan substitution, 499 points, under 1e-4 relative error in the
    far tail)."""
    from scipy.special import stdtr

    a, z = _grid_z(x, share)
    weights = _t_density(df_b)
    sf = float(np.sum(weights * stdtr(df_a, -z)))
    density = float(np.sum(weights * np.exp(_t_log_density(z, df_a))))
    return sf, density / a


@functools.lru_cache(maxsize=256)
def _t_log_norm(df: float) -> float:
    """log of Student's t density's normalising constant."""
    from scipy.special import gammaln

    return float(gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * math.log(df * math.pi))


def behrens_fisher_sf(x: float, share: float, df_a: float, df_b: float) -> float:
    """P(sqrt(share) * T_a + sqrt(1 - share) * T_b > x), T Student t with ``df_a``,
    ``df_b`` degrees of freedom."""
    from scipy.special import stdtr

    if share >= 1.0 - 1e-9:
        return float(stdtr(df_a, -x))
    if share <= 1e-9:
        return float(stdtr(df_b, -x))
    _, z = _grid_z(x, share)
    return float(np.sum(_t_density(df_b) * stdtr(df_a, -z)))


@functools.lru_cache(maxsize=4096)
def behrens_fisher_quantile(q: float, share: float, df_a: float, df_b: float) -> float:
    """The ``q`` quantile of the distribution of ``behrens_fisher_sf``: Newton's method
    on log P(W > x), which is close to linear in the tail, from Welch's quantile."""
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -behrens_fisher_quantile(1.0 - q, share, df_a, df_b)
    if share >= 1.0 - 1e-9:
        return t_quantile(q, df_a)
    if share <= 1e-9:
        return t_quantile(q, df_b)
    target = math.log(1.0 - q)
    welch_df = 1.0 / (share**2 / df_a + (1.0 - share) ** 2 / df_b)
    x = t_quantile(q, welch_df)
    for _ in range(50):
        sf, density = _sf_and_density(x, share, df_a, df_b)
        if sf <= 0 or density <= 0:
            break
        step = (math.log(sf) - target) * sf / density
        x += step
        if abs(step) < 1e-9 * max(1.0, abs(x)):
            return x
    from scipy.optimize import brentq  # Newton did not settle: bracket instead

    high = 1.5 * max(t_quantile(q, df_a), t_quantile(q, df_b)) + 1.0
    return float(
        brentq(lambda v: behrens_fisher_sf(v, share, df_a, df_b) - (1.0 - q), 0.0, high, xtol=1e-9)
    )


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) of two independent samples, with its standard error and the
    Behrens-Fisher distribution of (estimate - truth) / se."""

    estimate: float
    se: float
    #: share of se**2 that comes from side a
    share: float
    df_a: float
    df_b: float

    def quantile(self, q: float) -> float:
        return behrens_fisher_quantile(q, self.share, self.df_a, self.df_b)

    def cdf(self, x: float) -> float:
        return behrens_fisher_sf(-x, self.share, self.df_a, self.df_b)


def difference(a: Sequence[float], b: Sequence[float]) -> Difference | None:
    """``Difference`` of the two samples' means; ``None`` below two values a side."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = math.fsum(a) / na, math.fsum(b) / nb
    va = math.fsum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = math.fsum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    se2 = va + vb
    share = 0.5 if se2 == 0 else va / se2
    return Difference(ma - mb, math.sqrt(se2), share, float(na - 1), float(nb - 1))


def _shift(d: Difference, margin: float, alpha: float) -> tuple[float, float, float]:
    """(low, high, p) of a one-sided test that the difference lies below ``margin``."""
    if d.se == 0:
        return d.estimate, d.estimate, 0.0 if d.estimate < margin else 1.0
    half = d.quantile(1.0 - alpha) * d.se
    return d.estimate - half, d.estimate + half, d.cdf((d.estimate - margin) / d.se)


def relative_shift(
    new: Sequence[float], old: Sequence[float], max_drop: float, alpha: float
) -> Shift | None:
    """new / old as a ratio of geometric means (a difference of logs); tests
    ratio < 1 - max_drop."""
    if min(new, default=0) <= 0 or min(old, default=0) <= 0:
        return None
    d = difference([math.log(v) for v in new], [math.log(v) for v in old])
    if d is None or max_drop >= 1:
        return None
    low, high, p = _shift(d, math.log(1.0 - max_drop), alpha)
    return Shift(_exp(d.estimate), _exp(low), _exp(high), p, d)


def absolute_shift(
    new: Sequence[float], old: Sequence[float], max_drop: float, alpha: float
) -> Shift | None:
    """mean(new) - mean(old); tests difference < -max_drop."""
    d = difference(list(new), list(old))
    if d is None:
        return None
    low, high, p = _shift(d, -max_drop, alpha)
    return Shift(d.estimate, low, high, p, d)
