"""Confidence intervals and paired significance tests, as pure functions.

    from harness.stats import bootstrap_ci, wilson_interval, mcnemar_test
    low, high = bootstrap_ci(Accuracy(num_classes=10), preds, target, n_resamples=1000, confidence=0.95, seed=0)
    low, high = wilson_interval(correct=9931, total=10000, confidence=0.95)
    p = mcnemar_test(correct_a, correct_b)   # bool tensors over the same samples

Intervals are over the sampling of the test set (a new test set drawn from the same distribution),
not over training seeds: that is a different question, answered by training again.

- `wilson_interval`: the score interval of a proportion (accuracy, top-k accuracy); good coverage
  down to small samples and near 0 or 1, where the normal approximation fails.
- `bootstrap_ci`: the percentile bootstrap over samples for any harness metric. Confusion-matrix
  metrics (Accuracy with top_k=1, Precision, Recall, F1Score) resample every confusion matrix at
  once (one `bincount` of (resample, cell) pairs); AUROC, average precision (exact mode) and the
  calibration error weight each sample by how often a resample drew it, all resamples in one
  vectorised pass (`score_bootstrap`); any other metric is updated once per resample with a batch of
  indices (a loop over resamples, never over samples). Seeded: the same call gives the same interval.
- `confmat_bootstrap`: the same resampling when only the summed confusion matrix is known (after a
  distributed evaluation): drawing N samples with replacement from N samples is a multinomial draw
  over the matrix's cells with probabilities count / N.
- `paired_bootstrap_ci`: the interval of metric(A) - metric(B) on the same resampled samples;
  `paired_difference_ci` the same for the mean of two per-sample scores (e.g. each model's
  correctness as a bool tensor: the difference of their accuracies).
- `mcnemar_test`: the exact two-sided binomial test on the discordant pairs (A right and B wrong,
  or the reverse): is one model more often right than the other on the same samples?
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from harness.metrics import Accuracy, F1Score, Precision, Recall
from harness.metrics.functional import to_labels
from harness.stats.score_bootstrap import weighted_resample_values

CONFMAT_METRICS = (Accuracy, Precision, Recall, F1Score)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion correct / total."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got correct={correct}, total={total}")
    z = _z(confidence)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_test(correct_a: Tensor, correct_b: Tensor) -> float:
    """Exact two-sided p-value that A and B are equally often right where they disagree.

    `correct_a`, `correct_b`: bool tensors, one entry per sample, over the same samples. With b
    samples where only A is right and c where only B is, the p-value is
    P(X <= min(b, c)) * 2 for X ~ Binomial(b + c, 1/2), capped at 1 (1.0 when they never disagree).
    """
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1:
        raise ValueError(f"need two 1-D tensors over the same samples, got {tuple(correct_a.shape)} and "
                         f"{tuple(correct_b.shape)}")
    a, b = correct_a.bool(), correct_b.bool()
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def _percentiles(values: Tensor, confidence: float) -> tuple[float, float]:
    _z(confidence)  # checks the range
    alpha = (1 - confidence) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64, device=values.device)
    low, high = torch.quantile(values.double(), q).tolist()
    return low, high


def _confmat_value(metric: Any) -> Callable[[Tensor], Tensor] | None:
    """For a metric computed from a confusion matrix: a function of a batch of (B, C, C) matrices
    giving its B values; None for any other metric."""
    if not isinstance(metric, CONFMAT_METRICS) or (isinstance(metric, Accuracy) and metric.top_k != 1):
        return None
    if isinstance(metric, Accuracy):
        return lambda cm: cm.diagonal(dim1=-2, dim2=-1).sum(-1).double() / cm.sum((-2, -1)).double()
    average = metric.average
    if average not in ("micro", "macro", "weighted", "binary"):
        return None  # per-class results are not one number
    pick = {Precision: 0, Recall: 1, F1Score: 2}[type(metric)]
    return lambda cm: batched_precision_recall_f1(cm, average)[pick]


def batched_precision_recall_f1(confmat: Tensor, average: str) -> tuple[Tensor, Tensor, Tensor]:
    """`precision_recall_f1_from_confmat` for a batch of (B, C, C) matrices (float64, shape (B,))."""
    cm = confmat.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    predicted, support = cm.sum(-2), cm.sum(-1)
    if average == "micro":
        tp, predicted, support = tp.sum(-1), predicted.sum(-1), support.sum(-1)

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))

    precision, recall, f1 = ratio(tp, predicted), ratio(tp, support), ratio(2 * tp, predicted + support)
    if average == "micro":
        return precision, recall, f1
    if average == "macro":
        return precision.mean(-1), recall.mean(-1), f1.mean(-1)
    if average == "weighted":
        weights = ratio(support, support.sum(-1, keepdim=True).expand_as(support))
        return (precision * weights).sum(-1), (recall * weights).sum(-1), (f1 * weights).sum(-1)
    if average == "binary":
        return precision[..., 1], recall[..., 1], f1[..., 1]
    raise ValueError(f"average {average!r}: allowed are micro, macro, weighted, binary")


def _resample_indices(n: int, n_resamples: int, seed: int, device: torch.device) -> Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, n, (n_resamples, n), generator=generator).to(device)


def _resampled_values(metric: Any, preds: Tensor, target: Tensor, indices: Tensor) -> Tensor:
    """The metric on each row of `indices` (B resamples of sample indices): shape (B,)."""
    value_of = _confmat_value(metric)
    if value_of is not None:
        c = metric.num_classes
        labels = to_labels(preds, c)
        for name, values in (("preds", labels), ("target", target)):
            if bool(((values < 0) | (values >= c)).any()):  # stats run once, after the pass: a sync is fine
                raise ValueError(f"{name} holds labels outside [0, {c})")
        cells = target.long() * c + labels  # one confusion-matrix cell per sample
        resample = torch.arange(indices.shape[0], device=indices.device).unsqueeze(1)
        counts = torch.bincount((resample * c * c + cells[indices]).flatten(), minlength=indices.shape[0] * c * c)
        return value_of(counts.view(-1, c, c))
    weighted = weighted_resample_values(metric, preds, target, indices)  # AUROC, average precision, ECE
    if weighted is not None:
        return weighted
    values = []
    for rows in indices:  # any other metric: its own update / compute, once per resample
        metric.reset()
        metric.update(preds[rows], target[rows])
        values.append(torch.as_tensor(metric.compute(), dtype=torch.float64))
    metric.reset()
    return torch.stack(values)


def bootstrap_ci(metric: Any, preds: Tensor, target: Tensor, *, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of `metric` over the samples (preds[i], target[i]).

    `metric` is any harness metric whose `compute()` is one number (it is reset afterwards).
    """
    if preds.shape[0] != target.shape[0] or target.shape[0] == 0:
        raise ValueError(f"need the same, non-zero number of preds and targets, got {preds.shape[0]} "
                         f"and {target.shape[0]}")
    indices = _resample_indices(target.shape[0], n_resamples, seed, target.device)
    return _percentiles(_resampled_values(metric, preds, target, indices), confidence)


def paired_bootstrap_ci(metric: Any, preds_a: Tensor, preds_b: Tensor, target: Tensor, *,
                        n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of metric(A) - metric(B), both on the same resampled samples."""
    indices = _resample_indices(target.shape[0], n_resamples, seed, target.device)
    difference = _resampled_values(metric, preds_a, target, indices) - \
        _resampled_values(metric, preds_b, target, indices)
    return _percentiles(difference, confidence)


def paired_difference_ci(scores_a: Tensor, scores_b: Tensor, *, n_resamples: int = 1000,
                         confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of mean(A) - mean(B) over the same samples.

    `scores_a`, `scores_b`: one value per sample, over the same samples in the same order: bool
    correctness (the interval of the accuracy difference; the same resamples, hence the same
    interval, as `paired_bootstrap_ci(Accuracy(...), preds_a, preds_b, target)` with this seed) or
    any per-sample score. The resamples are drawn together (one gather), on the scores' device.
    """
    if scores_a.shape != scores_b.shape or scores_a.ndim != 1 or scores_a.shape[0] == 0:
        raise ValueError(f"need two non-empty 1-D tensors over the same samples, got {tuple(scores_a.shape)} and "
                         f"{tuple(scores_b.shape)}")
    difference = scores_a.double() - scores_b.double()
    indices = _resample_indices(difference.shape[0], n_resamples, seed, difference.device)
    return _percentiles(difference[indices].mean(1), confidence)


def resample_confmat(confmat: Tensor | list[list[int]], *, n_resamples: int = 1000, seed: int = 0) -> Tensor:
    """(n_resamples, C, C) bootstrap resamples of the samples behind a confusion matrix, when only the
    matrix is known: each resample draws N samples with replacement, i.e. N cells of the matrix with
    probabilities count / N."""
    counts = torch.as_tensor(confmat, dtype=torch.float64)
    c, n = counts.shape[0], int(counts.sum())
    if n == 0:
        raise ValueError("the confusion matrix holds no samples")
    generator = torch.Generator().manual_seed(seed)
    cells = torch.multinomial(counts.flatten() / n, n * n_resamples, replacement=True, generator=generator)
    resample = torch.arange(n_resamples).repeat_interleave(n)
    return torch.bincount(resample * c * c + cells, minlength=n_resamples * c * c).view(n_resamples, c, c)


def percentile_interval(values: Tensor, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap values (the percentile method)."""
    return _percentiles(values, confidence)


def confmat_bootstrap(confmat: Tensor | list[list[int]], value_of: Callable[[Tensor], Tensor], *,
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of `value_of` (a function of a batch of (B, C, C) matrices)
    over `resample_confmat`'s resamples."""
    return _percentiles(value_of(resample_confmat(confmat, n_resamples=n_resamples, seed=seed)), confidence)
