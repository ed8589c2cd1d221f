"""The Student t interval of a mean, for a handful of repeated measurements (seeds, folds).

    low, high = t_interval([0.9871, 0.9880, 0.9866], confidence=0.95)   # mean ± t(0.975, n-1) · s / sqrt(n)

The quantile is computed here (the regularized incomplete beta function by its continued fraction,
inverted by bisection) with `math` alone: scipy is not a run-time dependency of the harness.

What the interval is about: the spread of the measurements given. Over training seeds, it says how
much a recipe's result moves when it is trained again; it says nothing about the sampling of the
test set (that is `wilson_interval` / the bootstrap). Over cross-validation folds it is optimistic:
the folds' models share most of their training data, so their scores are not independent and the
true spread is wider than the formula assumes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

_EPS = 1e-16  # relative precision of the continued fraction
_TINY = 1e-300  # Lentz's guard against a zero denominator


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= d * c
        if abs(d * c - 1.0) < _EPS:
            return result
    raise ArithmeticError(f"the incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"need a > 0, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast on this side of the mode; the other side by I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with `df` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t such that P(T <= t) = p (scipy's `t.ppf(p, df)`), by bisection on the cdf."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:  # bracket it: df=1, p=0.9995 lies near 637
        low, high = high, 2.0 * high
    for _ in range(200):  # halves the bracket each time: far below float precision well before the end
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The `confidence` interval of the mean of `values`: mean ± t((1+confidence)/2, n-1) · s / sqrt(n),
    s the sample standard deviation (ddof=1). Needs at least two values."""
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {len(values)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = statistics.fmean(values)
    half = student_t_quantile(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half
