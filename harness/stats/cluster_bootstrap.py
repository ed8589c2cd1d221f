"""The paired bootstrap of a difference of two ratios over clusters of dependent units: `paired_ratio_bootstrap`.

A language model's per-character losses are not independent samples: the characters of one stretch
of text share their context, so a bootstrap that resampled characters one by one would treat a
text as far more evidence than it is and give too narrow an interval. The clusters are resampled
instead (for text: the validation windows of `block_size` consecutive characters), each keeping its
characters together, and both models are scored on the same resampled clusters (paired):

    difference = sum_i (sum_a[i] - sum_b[i]) / sum_i count[i]      (a ratio estimator: per unit, not per cluster)

over clusters i, where `sum_a[i]` is model A's summed loss over cluster i's `count[i]` units. Windows
are the unit of resampling because they are what the scorer treats as one input; a dependence that
reaches across two windows is not captured (a cluster bootstrap is honest about dependence within a
cluster only).
"""

from __future__ import annotations

from torch import Tensor

from harness.stats.intervals import _percentiles, _resample_indices


def paired_ratio_bootstrap(sums_a: Tensor, sums_b: Tensor, counts: Tensor, *, n_resamples: int = 1000,
                           confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The difference of two ratio estimates over the same clusters, its percentile-bootstrap interval and p-value.

    `sums_a`, `sums_b`: per cluster, each model's summed score (e.g. negative log-likelihood in nats);
    `counts`: per cluster, the units it holds (e.g. characters predicted), the same for both models.
    Each resample draws as many clusters as there are, with replacement (`torch.randint` from a CPU
    generator seeded by `seed`, the same draw as `paired_difference_ci`'s), on the sums' device.

    Returns {"difference": sum(a - b) / sum(counts) over every cluster, "low", "high": the central
    `confidence` percentile interval of the resampled differences, "p_value": the two-sided bootstrap
    p-value 2 * min(share of resampled differences <= 0, share >= 0), capped at 1 (its resolution is
    1 / n_resamples: 0.0 means fewer than one resample in n_resamples reached 0)}.
    """
    if not (sums_a.shape == sums_b.shape == counts.shape) or sums_a.ndim != 1 or sums_a.shape[0] == 0:
        raise ValueError(f"need three non-empty 1-D tensors over the same clusters, got {tuple(sums_a.shape)}, "
                         f"{tuple(sums_b.shape)} and {tuple(counts.shape)}")
    difference = sums_a.double() - sums_b.double()
    weight = counts.double()
    if bool((weight < 0).any()) or float(weight.sum()) <= 0:
        raise ValueError("counts must be non-negative with a positive total")
    indices = _resample_indices(difference.shape[0], n_resamples, seed, difference.device)
    resampled = difference[indices].sum(1) / weight[indices].sum(1).clamp(min=1e-300)  # (n_resamples,)
    low, high = _percentiles(resampled, confidence)
    tail = min(float((resampled <= 0).double().mean()), float((resampled >= 0).double().mean()))
    return {"difference": float(difference.sum() / weight.sum()), "low": low, "high": high,
            "p_value": min(1.0, 2 * tail)}
