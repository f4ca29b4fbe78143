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
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence


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
