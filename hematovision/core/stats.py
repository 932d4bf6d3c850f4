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


def rare_event_detection_limit(n: int, confidence: float = 0.95) -> float | None:
    """The smallest population (a fraction in (0, 1]) that a count of ``n`` cells shows at least once
    with probability ``confidence``: ``p = 1 - (1 - confidence) ** (1 / n)``.

    Why: the chance of missing a population of share ``p`` in ``n`` independent cells is
    ``(1 - p) ** n`` (binomial, ``k = 0``); setting it to ``1 - confidence`` gives ``p``. For 200 cells
    that is ~1.5 %, for 2,000 ~0.15 %: a blast population below it may be missed by chance alone
    (the "rule of three", 3/n, is its approximation for large n). ``None`` when no cell was counted.
    """
    if n <= 0:
        return None
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(1.0 - (1.0 - confidence) ** (1.0 / n))


def poisson_interval(k: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval for a Poisson count ``k`` (counts, not rates)."""
    from scipy.stats import chi2

    if k < 0:
        raise ValueError(f"a count cannot be negative, got {k}")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(chi2.ppf(alpha / 2, 2 * k) / 2)
    hi = float(chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2)
    return (lo, hi)
