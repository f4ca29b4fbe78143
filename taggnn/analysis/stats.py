r"""Statistics for comparing training runs over seeds.

Runs of the rows of an ablation use the same seeds (paired). For each row,
:func:`summarize` gives the mean, the sample standard deviation and a 95%
confidence interval of the mean from Student's :math:`t` distribution,

.. math::
    \bar{x} \pm t_{0.975,\, n-1} \frac{s}{\sqrt{n}},

and :func:`paired_difference` the same for the per-seed differences
:math:`d_i = x_i - y_i` between two rows (a paired :math:`t` interval). A
difference whose interval contains 0 is reported as no difference.

An ablation compares many rows to one reference, and at the 95% level one
comparison in twenty finds a difference where there is none. :func:`holm_adjust`
gives Holm's step-down adjusted p-values (Holm, "A simple sequentially rejective
multiple test procedure", Scand. J. Statist. 1979) of the paired t-tests
(:func:`paired_difference`'s ``p``): a difference whose adjusted p-value is below
0.05 holds with a family-wise error rate of 5% over all the comparisons.

A difference found to be "no difference" is only as telling as the study's power.
:func:`paired_power` gives the power of the paired t-test from the noncentral
:math:`t` distribution, :func:`minimum_detectable_difference` the smallest true
difference a study of ``n`` seeds detects at 80% power given the spread of its
per-seed differences, and :func:`seeds_needed` how many seeds detect a given one.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value, e.g. 2.776 for 95% and 4 degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def summarize(values: Sequence[float], confidence: float = 0.95) -> Dict[str, float]:
    """``mean``, ``std`` (sample), ``n``, and the confidence interval ``ci_low`` / ``ci_high``
    (half-width ``ci``); with one value the interval is unknown (NaN)."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": float("nan"), "n": 1, "ci": float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan")}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci": half, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(values: Sequence[float], reference: Sequence[float],
                      confidence: float = 0.95) -> Dict[str, object]:
    """Summary of ``values[i] - reference[i]`` (same seeds) with ``verdict``: ``"higher"``,
    ``"lower"`` or ``"no difference"`` (the interval contains 0), and ``p``, the two-sided
    paired t-test p-value."""
    if len(values) != len(reference):
        raise ValueError(f"paired values need the same seeds: {len(values)} vs {len(reference)} values")
    differences = [a - b for a, b in zip(values, reference)]
    result: Dict[str, object] = dict(summarize(differences, confidence))
    result["p"] = paired_p_value(differences)
    low, high = result["ci_low"], result["ci_high"]
    if low != low or (low <= 0 <= high):
        result["verdict"] = "no difference"
    else:
        result["verdict"] = "higher" if low > 0 else "lower"
    return result


def paired_p_value(differences: Sequence[float]) -> float:
    r"""Two-sided p-value of the paired t-test of mean difference 0,
    :math:`t = \bar{d} / (s_d / \sqrt{n})` with :math:`n - 1` degrees of freedom (NaN for one
    value; 1 when every difference is 0, 0 when they are all the same nonzero value)."""
    from scipy.stats import t

    n = len(differences)
    if n < 2:
        return float("nan")
    mean = sum(differences) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))


def holm_adjust(p_values: Sequence[float]) -> List[float]:
    r"""Holm's step-down adjusted p-values, in the input order: with the :math:`m` p-values
    sorted, :math:`\tilde{p}_{(i)} = \max_{j \le i} \min(1, (m - j + 1)\, p_{(j)})`. NaN
    entries stay NaN and do not count in :math:`m`.

    Raises:
        ValueError: A p-value outside :math:`[0, 1]` (or infinite), naming it and its position.
    """
    for position, p in enumerate(p_values):
        if p == p and not 0.0 <= p <= 1.0:
            raise ValueError(f"holm_adjust: p-value {p!r} at position {position} is not a probability in [0, 1]")
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p == p)
    m = len(indexed)
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_power(difference: float, std: float, n: int, alpha: float = 0.05) -> float:
    r"""Power of the two-sided paired :math:`t`-test at level :obj:`alpha` with :obj:`n` pairs,
    when the true mean difference is :obj:`difference` and the per-seed differences spread with
    standard deviation :obj:`std`: with :math:`\nu = n - 1`, the noncentrality
    :math:`\delta = \text{difference} / (\text{std} / \sqrt{n})` and :math:`c = t_{1-\alpha/2,\,\nu}`,

    .. math::
        1 - F_{\nu,\delta}(c) + F_{\nu,\delta}(-c) = 1 - F_{\nu,\delta}(c) + 1 - F_{\nu,-\delta}(c),

    where :math:`F_{\nu,\delta}` is the noncentral :math:`t` CDF (``scipy.stats.nct``; scipy is a
    dependency of scikit-learn, which taggnn depends on). NaN for fewer than 2 pairs or an unknown
    spread; with ``std == 0`` the test rejects every nonzero difference (power 1) and never 0.
    """
    from scipy.stats import nct, t

    if n < 2 or not math.isfinite(std) or std < 0:
        return float("nan")
    if std == 0:
        return 1.0 if difference != 0 else 0.0
    dof = n - 1
    critical = float(t.ppf(1 - alpha / 2, dof))
    delta = difference / (std / math.sqrt(n))
    # P(T < -c) for noncentrality delta is P(T > c) for -delta: scipy's nct.cdf is NaN far in the
    # lower tail (e.g. 1 degree of freedom, delta ~ 8), its sf is not
    return float(nct.sf(critical, dof, delta) + nct.sf(critical, dof, -delta))


def minimum_detectable_difference(std: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference that a two-sided paired :math:`t`-test with :obj:`n` pairs
    at level :obj:`alpha` detects with probability :obj:`power`, for per-seed differences spread
    with standard deviation :obj:`std` (solved on :func:`paired_power`; it scales with ``std``).
    NaN for fewer than 2 pairs or an unknown spread; 0 when ``std == 0``."""
    from scipy.optimize import brentq

    if n < 2 or not math.isfinite(std) or std < 0:
        return float("nan")
    if std == 0:
        return 0.0
    high = std  # doubled until its power reaches the target, then the root is bracketed
    while paired_power(high, std, n, alpha) < power:
        high *= 2
    return float(brentq(lambda d: paired_power(d, std, n, alpha) - power, 0.0, high, xtol=1e-10 * std))


def seeds_needed(difference: float, std: float, power: float = 0.8, alpha: float = 0.05,
                 max_seeds: int = 10_000) -> Optional[int]:
    """The fewest seeds (pairs, at least 2) with which a two-sided paired :math:`t`-test at level
    :obj:`alpha` detects a true mean difference :obj:`difference` with probability :obj:`power`,
    given a per-seed standard deviation of the differences :obj:`std` (:func:`paired_power`).
    ``None`` when the spread is unknown, the difference is 0, or more than :obj:`max_seeds` are needed."""
    if not math.isfinite(std) or std < 0 or difference == 0 or not math.isfinite(difference):
        return None
    if std == 0:
        return 2
    low, high = 2, 2
    while paired_power(difference, std, high, alpha) < power:  # power grows with n: double, then bisect
        if high >= max_seeds:
            return None
        low, high = high, min(2 * high, max_seeds)
    while low < high:
        middle = (low + high) // 2
        if paired_power(difference, std, middle, alpha) >= power:
            high = middle
        else:
            low = middle + 1
    return high
