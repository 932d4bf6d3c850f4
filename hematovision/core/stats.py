"""Confidence intervals for differential percentages.

Exact binomial (Clopper–Pearson) 95 % intervals: the method behind the Rümke table, the lab's
reference for how uncertain a manual differential of n cells is (Rümke, 1977; CLSI H20-A2).
"""

from __future__ import annotations

from scipy.stats import beta


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a proportion k/n, as fractions in [0, 1].

    Args:
        k: cells of the class.
        n: cells counted (all white cells).
        level: confidence level.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in 0..n={n}")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def percent_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The same interval in percent, rounded to 0.1."""
    lo, hi = clopper_pearson(k, n, level)
    return (round(100 * lo, 1), round(100 * hi, 1))
