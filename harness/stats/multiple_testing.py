"""Several tests at once: the Holm-Bonferroni adjustment of their p-values.

Comparing k models pairwise runs k(k-1)/2 tests; at a 5 % level each, the chance that at least one
says "different" by luck alone grows with their number. Holm's step-down method keeps that chance
(the family-wise error rate) at 5 % under any dependence between the tests, and rejects at least
as much as Bonferroni's: the i-th smallest of m p-values is multiplied by m - i + 1, and the
adjusted values are made non-decreasing in that order (capped at 1). A test is significant at
level alpha when its adjusted p-value is <= alpha.
"""

from __future__ import annotations

from collections.abc import Sequence


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given (statsmodels' `multipletests(p, method="holm")[1]`)."""
    p = [float(v) for v in pvalues]
    if any(not 0.0 <= v <= 1.0 for v in p):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))  # step-down: never below a smaller p's value
        adjusted[i] = running
    return adjusted
