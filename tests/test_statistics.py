import math

import pytest

from pytest_ollama_cpu.statistics import Summary, format_interval, ratio


def test_summary_of_known_values():
    s = Summary.from_values([10.0, 12.0, 14.0, 16.0])
    assert s.n == 4
    assert s.median == 13.0
    assert s.mean == 13.0
    assert s.stdev == pytest.approx(math.sqrt(20 / 3))
    assert (s.minimum, s.maximum) == (10.0, 16.0)
    # t(0.975, 3) = 3.182446...; half width = t * stdev / sqrt(4)
    half = 3.1824463 * math.sqrt(20 / 3) / 2
    assert s.ci_low == pytest.approx(13.0 - half, rel=1e-6)
    assert s.ci_high == pytest.approx(13.0 + half, rel=1e-6)
    assert s.relative_stdev == pytest.approx(math.sqrt(20 / 3) / 13)


def test_odd_count_median_and_order_independence():
    assert Summary.from_values([3.0, 1.0, 2.0]).median == 2.0
    assert Summary.from_values([5, 1, 4, 2, 3]) == Summary.from_values([1, 2, 3, 4, 5])


def test_one_value_has_no_spread():
    s = Summary.from_values([42.0])
    assert (s.median, s.mean) == (42.0, 42.0)
    assert s.stdev is None and s.ci_low is None and s.ci_high is None
    assert s.relative_stdev is None


def test_wider_confidence_gives_wider_interval():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    narrow = Summary.from_values(values, confidence=0.90)
    wide = Summary.from_values(values, confidence=0.99)
    assert narrow.ci_low is not None and narrow.ci_high is not None
    assert wide.ci_low is not None and wide.ci_high is not None
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        Summary.from_values([])
    with pytest.raises(ValueError, match="confidence"):
        Summary.from_values([1.0, 2.0], confidence=1.5)


def test_ratio():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None


def test_intervals_read_with_their_signs():
    assert format_interval(0.45, 0.49) == "0.45-0.49"
    assert format_interval(-55.21, 172.94, 1) == "-55.2 to 172.9"
    assert format_interval(-3.0, -1.0, 1) == "-3.0 to -1.0"


def test_wild_samples_give_unbounded_ratios_not_an_overflow():
    from pytest_ollama_cpu.statistics import ratio_bounds, relative_shift

    shift = relative_shift([10.0, 40.0], [30.0, 31.0], 0.05, 0.01 / 40)
    assert shift is not None and shift.high == float("inf") and shift.low >= 0
    bounds = ratio_bounds([10.0, 40.0], [30.0, 31.0], 0.01 / 40)
    assert bounds is not None and bounds.high == float("inf")


def test_means_with_literal_numbers():
    from pytest_ollama_cpu.statistics import geometric_mean, mean

    assert mean([1.0, 2.0, 6.0]) == 3.0 and mean([]) is None
    assert geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert geometric_mean([0.0, 4.0]) == 2.0  # not positive: the arithmetic mean
    assert geometric_mean([]) is None


def test_behrens_fisher_against_its_limits_and_a_simulation():
    import numpy as np

    from pytest_ollama_cpu.statistics import (
        behrens_fisher_quantile,
        behrens_fisher_sf,
        difference,
        t_quantile,
    )

    # all the variance on one side: that side's Student t
    assert behrens_fisher_quantile(0.999, 1.0, 4.0, 9.0) == pytest.approx(t_quantile(0.999, 4))
    assert behrens_fisher_quantile(0.999, 0.0, 4.0, 9.0) == pytest.approx(t_quantile(0.999, 9))
    # equal shares at 4 and 4 degrees of freedom: between Welch's t(8) and Hsu's t(4)
    q = behrens_fisher_quantile(0.999, 0.5, 4.0, 4.0)
    assert t_quantile(0.999, 8) < q < t_quantile(0.999, 4)
    assert q == pytest.approx(6.4467, abs=1e-3)  # a 4001-point integration, solved apart
    assert behrens_fisher_sf(q, 0.5, 4.0, 4.0) == pytest.approx(0.001, rel=1e-4)
    assert behrens_fisher_quantile(0.001, 0.5, 4.0, 4.0) == pytest.approx(-q)
    # the tail it gives is the tail of the weighted sum of two t's, by simulation
    rng = np.random.default_rng(1)
    w = np.sqrt(0.3) * rng.standard_t(4, 2_000_000) + np.sqrt(0.7) * rng.standard_t(6, 2_000_000)
    x = behrens_fisher_quantile(0.99, 0.3, 4.0, 6.0)
    assert (w > x).mean() == pytest.approx(0.01, rel=0.05)
    # a difference of two samples: each side's share of the variance, n - 1 degrees of freedom
    d = difference([1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 2.0, 2.0])
    assert d is not None
    assert d.estimate == pytest.approx(2.0 - 1.4)
    assert (d.df_a, d.df_b) == (2.0, 4.0)
    assert d.share == pytest.approx((1.0 / 3) / (1.0 / 3 + 0.3 / 5))
    assert difference([1.0], [1.0, 2.0]) is None
