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
