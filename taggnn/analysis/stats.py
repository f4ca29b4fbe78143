r"""Statistics for comparing training runs over seeds.

Runs of the rows of an ablation use the same seeds (paired). For each row,
:func:`summarize` gives the mean, the sample standard deviation and a 95%
confidence interval of the mean from Student's :math:`t` distribution,

.. math::
    \bar{x} \pm t_{0.975,\, n-1} \frac{s}{\sqrt{n}},

and :func:`paired_difference` the same for the per-seed differences
:math:`d_i = x_i - y_i` between two rows (a paired :math:`t` interval). A
difference whose interval contains 0 is reported as no difference.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence


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
    ``"lower"`` or ``"no difference"`` (the interval contains 0)."""
    if len(values) != len(reference):
        raise ValueError(f"paired values need the same seeds: {len(values)} vs {len(reference)} values")
    result: Dict[str, object] = dict(summarize([a - b for a, b in zip(values, reference)], confidence))
    low, high = result["ci_low"], result["ci_high"]
    if low != low or (low <= 0 <= high):
        result["verdict"] = "no difference"
    else:
        result["verdict"] = "higher" if low > 0 else "lower"
    return result
