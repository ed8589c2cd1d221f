"""Bootstrap resamples of the score metrics in one vectorised pass: AUROC, average precision, calibration error.

A bootstrap resample draws N of the N samples with replacement; it is the same as weighting every
sample by how often it was drawn (a row of counts). The score metrics are sums over samples (the
true and false positives above each threshold, the per-bin counts of the calibration error), so a
resample's value is the metric's formula with each sample's terms multiplied by its count:

- AUROC / average precision (exact mode): the samples are sorted by each class's score once; per
  resample, the counts of positives and of all samples at or above each score are cumulative sums of
  the weights in that order (a run of tied scores is one point of the curve, as in `ranking_curve`),
  and the metrics' areas (`auroc_from_curve`, `average_precision_from_curve`) are written as sums over
  samples of those running sums.
- Calibration error: each sample's bin is fixed; the per-bin counts, hits and confidence sums of a
  resample are one matrix product of its weights with the samples' one-hot bins.

Every resample costs O(N) per class instead of a metric update and a sort (`python benchmarks/bootstrap.py`
times both). The values equal the metric computed on the resampled samples: tests/test_stats.py checks
them against scikit-learn on each resample, tied scores included, and against the metric's own update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.metrics import AUROC, AveragePrecision, CalibrationError
from harness.metrics.functional import (
    calibration_bin_index,
    calibration_error_from_bins,
    to_probabilities,
)

CHUNK_ELEMENTS = 2**22  # weights of this many (resample, sample) pairs at a time: 16-32 MB


def weighted_resample_values(metric: Any, preds: Tensor, target: Tensor, indices: Tensor) -> Tensor | None:
    """`metric` on each row of `indices` (B resamples of sample indices), shape (B,), through sample
    weights; None for a metric without a weighted form here (binned ranking metrics, per-class values)."""
    ranking = isinstance(metric, (AUROC, AveragePrecision)) and metric.thresholds is None
    if ranking and metric.average == "none" and metric.num_classes != 2:
        return None  # (C,) values per resample: not one number
    if not ranking and not isinstance(metric, CalibrationError):
        return None
    c = metric.num_classes
    if bool(((target < 0) | (target >= c)).any()):  # once, after the pass: a sync is fine
        raise ValueError(f"target holds labels outside [0, {c})")
    probs = to_probabilities(preds.detach(), c)  # all samples read as one batch, as the metric reads a batch
    target = target.long()
    n = target.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // n)
    # Counts and their running sums are integers up to 2N: float32 holds them exactly below 2**24,
    # at half the memory traffic of float64 (the passes over (B, N) arrays are the cost here).
    counts_dtype = torch.float32 if ranking and 2 * n < 2**24 else torch.float64
    values = []
    for start in range(0, indices.shape[0], chunk):  # a loop over groups of resamples, never over samples
        weights = _counts(indices[start : start + chunk], counts_dtype)
        if ranking:
            values.append(_ranking_values(metric, probs, target, weights))
        else:
            values.append(_calibration_values(metric, probs, target, weights))
    return torch.cat(values)


def _counts(rows: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, N): how often each resample (a row of sample indices) drew each sample."""
    return torch.zeros(rows.shape, dtype=dtype, device=rows.device).scatter_add_(
        1, rows, torch.ones(rows.shape, dtype=dtype, device=rows.device))


def _ranking_values(metric: AUROC | AveragePrecision, probs: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    area = _auroc if isinstance(metric, AUROC) else _average_precision
    if metric.num_classes == 2:  # the binary figure: class 1 is the positive class
        return area(_RunningSums(probs[:, 1], target == 1, weights))
    per_class, positives = [], []
    for c in range(metric.num_classes):  # classes, not samples
        sums = _RunningSums(probs[:, c], target == c, weights)
        per_class.append(area(sums))
        positives.append(sums.positives)
    values, support = torch.stack(per_class, dim=1), torch.stack(positives, dim=1)  # (B, C)
    defined = ~values.isnan()
    share = defined.double() if metric.average == "macro" else support * defined
    total = share.sum(dim=1)
    mean = (torch.where(defined, values, 0.0) * share).sum(dim=1) / total
    return torch.where(total > 0, mean, float("nan"))


class _RunningSums:
    """One class's scores sorted from the highest down, and per resample and sample (B, N), in that order:
    `weight` and `positive_weight` (the sample's count, and the count if it is a positive), and the
    weighted true positives and all samples scoring at least the sample's score (`tp_end`, `seen_end`:
    at the end of its run of tied scores) and strictly above it (`tp_before`).

    A run of tied scores is one point of the curve, as in `ranking_curve`; without ties (the usual
    case) the running sums need no gathering."""

    def __init__(self, scores: Tensor, positive: Tensor, weights: Tensor) -> None:
        order = scores.argsort(descending=True, stable=True)
        ordered = scores[order]
        self.weight = weights.index_select(1, order)
        self.positive_weight = self.weight * positive[order].to(weights.dtype)
        tp, seen = self.positive_weight.cumsum(dim=1), self.weight.cumsum(dim=1)
        self.positives = tp[:, -1].double()
        self.total = seen[:, -1].double()
        n = ordered.shape[0]
        starts = torch.ones(n, dtype=torch.bool, device=scores.device)
        starts[1:] = ordered[1:] != ordered[:-1]
        if bool(starts.all()):  # no ties
            self.tp_end, self.seen_end, self.tp_before = tp, seen, tp - self.positive_weight
            return
        index = torch.arange(n, device=scores.device)
        first = torch.where(starts, index, 0).cummax(dim=0).values  # where each sample's run starts
        ends = torch.ones_like(starts)
        ends[:-1] = starts[1:]
        last = torch.where(ends, index, n).flip(0).cummin(dim=0).values.flip(0)  # where it ends
        self.tp_end, self.seen_end = tp.index_select(1, last), seen.index_select(1, last)
        before = tp.index_select(1, (first - 1).clamp(min=0))
        self.tp_before = torch.where(first > 0, before, 0.0)


def _auroc(s: _RunningSums) -> Tensor:
    """`auroc_from_curve`'s trapezoids, sum over runs of (its negatives) x (TP before it + TP at its end) / 2,
    written per sample: each negative adds its weight times the mean of the two."""
    negative_weight = s.weight - s.positive_weight
    # float32 products stay exact (each count times 2N is far below 2**24 for any resample that occurs);
    # the sum over N samples is accumulated in float64
    area = (negative_weight * (s.tp_before + s.tp_end)).sum(dim=1, dtype=torch.float64) / 2
    negatives = s.total - s.positives
    undefined = (s.positives == 0) | (negatives == 0)
    return torch.where(undefined, float("nan"), area / (s.positives * negatives))


def _average_precision(s: _RunningSums) -> Tensor:
    """`average_precision_from_curve`, sum over runs of (its positives) x (precision at its end) / P,
    written per sample: each positive adds its weight times the precision at the end of its run."""
    precision = s.tp_end.double() / s.seen_end.double().clamp(min=1)  # seen_end is 0 only where tp_end is
    summed = (s.positive_weight.double() * precision).sum(dim=1)
    return torch.where(s.positives == 0, float("nan"), summed / s.positives)


def _calibration_values(metric: CalibrationError, probs: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    confidence, predicted = probs.max(dim=1)
    bins = torch.nn.functional.one_hot(calibration_bin_index(confidence, metric.n_bins), metric.n_bins).double()
    count = weights @ bins  # (B, n_bins)
    correct = weights @ (bins * (predicted == target).double().unsqueeze(1))
    conf_sum = weights @ (bins * confidence.unsqueeze(1))
    return calibration_error_from_bins(conf_sum, correct, count, metric.norm)
