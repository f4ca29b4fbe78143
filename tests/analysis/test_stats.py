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
