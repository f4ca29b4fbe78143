import math

import pytest

from taggnn.analysis import paired_difference, summarize


def test_summary_uses_student_t():
    s = summarize([0.50, 0.52, 0.48, 0.55, 0.45])
    std = math.sqrt(sum((v - 0.5) ** 2 for v in [0.50, 0.52, 0.48, 0.55, 0.45]) / 4)
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(std)
    assert s["ci"] == pytest.approx(2.7764451 * std / math.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert math.isnan(summarize([0.3])["ci"])


def test_paired_difference_and_verdicts():
    base = [0.50, 0.60, 0.55, 0.70, 0.65]
    up = [b + 0.05 + 0.001 * i for i, b in enumerate(base)]
    assert paired_difference(up, base)["verdict"] == "higher"
    assert paired_difference(base, up)["verdict"] == "lower"
    noisy = [b + d for b, d in zip(base, [0.05, -0.04, 0.03, -0.05, 0.01])]
    assert paired_difference(noisy, base)["verdict"] == "no difference"
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0], [1.0, 2.0])


def test_paired_p_value_is_the_paired_t_test():
    from scipy.stats import ttest_rel

    from taggnn.analysis import paired_p_value

    a = [52.1, 53.4, 50.9, 55.0, 51.7, 54.2]
    b = [51.0, 53.9, 50.1, 53.8, 51.2, 53.0]
    expected = ttest_rel(a, b).pvalue
    assert paired_difference(a, b)["p"] == pytest.approx(expected, rel=1e-9)
    assert paired_p_value([x - y for x, y in zip(a, b)]) == pytest.approx(expected, rel=1e-9)
    assert paired_p_value([0.0, 0.0, 0.0]) == 1.0 and paired_p_value([0.5, 0.5]) == 0.0
    assert math.isnan(paired_p_value([0.3]))


def test_holm_adjustment():
    from taggnn.analysis import holm_adjust

    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x, then running maximum: 0.02, 0.03, 0.06, 0.06
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm_adjust([float("nan"), 0.01])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.01)  # NaN does not count in m


@pytest.mark.parametrize("bad", [1.5, -0.01, float("inf"), 5.0])
def test_holm_adjustment_refuses_values_that_are_not_probabilities(bad):
    from taggnn.analysis import holm_adjust

    with pytest.raises(ValueError, match=rf"p-value {bad!r} at position 1 is not a probability in \[0, 1\]"):
        holm_adjust([0.01, bad, 0.2])
    assert holm_adjust([0.0, 1.0]) == pytest.approx([0.0, 1.0])  # the ends are probabilities


def _simulated_power(difference, std, n, simulations=20000, seed=0):
    """Fraction of simulated studies (normal per-seed differences) that the paired t-test rejects at 5%."""
    import numpy as np
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(seed)
    samples = rng.normal(difference, std, size=(simulations, n))
    return float((ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05).mean())


@pytest.mark.parametrize("difference,std,n", [(1.0, 1.0, 10), (0.7, 2.0, 5), (-1.5, 1.2, 3)])
def test_paired_power_matches_a_simulation(difference, std, n):
    from taggnn.analysis import paired_power

    power = paired_power(difference, std, n)
    # 20000 simulations: standard error <= 0.0036, so 0.015 is more than 4 standard errors
    assert power == pytest.approx(_simulated_power(difference, std, n), abs=0.015)
    assert paired_power(0.0, std, n) == pytest.approx(0.05, abs=1e-9)  # no difference: the test's level


def test_minimum_detectable_difference_has_80_percent_power():
    from scipy.stats import nct, t

    from taggnn.analysis import minimum_detectable_difference

    std, n = 1.3, 6
    mdd = minimum_detectable_difference(std, n)
    critical = t.ppf(0.975, n - 1)
    delta = mdd / (std / math.sqrt(n))
    assert nct.sf(critical, n - 1, delta) + nct.cdf(-critical, n - 1, delta) == pytest.approx(0.8, abs=1e-8)
    assert _simulated_power(mdd, std, n, seed=1) == pytest.approx(0.8, abs=0.015)
    assert minimum_detectable_difference(2 * std, n) == pytest.approx(2 * mdd, rel=1e-8)  # scales with the spread
    assert minimum_detectable_difference(std, 20) < mdd  # more seeds, smaller detectable differences
    assert minimum_detectable_difference(0.0, n) == 0.0
    assert math.isnan(minimum_detectable_difference(std, 1)) and math.isnan(minimum_detectable_difference(math.nan, 5))


def test_seeds_needed_is_the_fewest_with_80_percent_power():
    from taggnn.analysis import paired_power, seeds_needed

    # Cohen's d = 0.5 needs 34 pairs and d = 1 needs 10 (the standard paired t-test tables, two-sided 5%, 80%)
    assert seeds_needed(0.5, 1.0) == 34 and seeds_needed(-2.0, 2.0) == 10
    for difference, std in [(1.0, 2.5), (0.3, 0.4), (3.0, 1.0)]:
        n = seeds_needed(difference, std)
        assert paired_power(difference, std, n) >= 0.8 and (n == 2 or paired_power(difference, std, n - 1) < 0.8)
        assert _simulated_power(difference, std, n, seed=2) >= 0.8 - 0.015
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(1.0, math.nan) is None
    assert seeds_needed(0.01, 10.0, max_seeds=100) is None


def test_power_stays_finite_for_two_seeds():
    """Two seeds (1 degree of freedom) with a wide spread: the detectable difference is large, and
    scipy's noncentral t CDF is NaN that far in its lower tail."""
    from scipy.stats import nct, t

    from taggnn.analysis import minimum_detectable_difference, paired_power

    assert all(math.isfinite(paired_power(d, 4.4, 2)) for d in [x / 2 for x in range(0, 400)])
    mdd = minimum_detectable_difference(4.4, 2)
    delta = mdd / (4.4 / math.sqrt(2))
    assert nct.sf(t.ppf(0.975, 1), 1, delta) == pytest.approx(0.8, abs=1e-6)  # the lower tail is ~0 here
    assert _simulated_power(mdd, 4.4, 2, seed=3) == pytest.approx(0.8, abs=0.015)
