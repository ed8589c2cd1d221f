"""Calibration of predicted probabilities: the calibration error (ECE, MCE) and the Brier score.

``update(preds, target)`` takes ``target`` as integer labels ``(N,)`` and ``preds`` as ``(N, C)``
probabilities, or for ``num_classes=2`` also ``(N,)`` probabilities of class 1. Like torchmetrics,
a batch holding a value outside ``[0, 1]`` is read as logits and goes through softmax (sigmoid for
``(N,)``), decided on the device: see :func:`harness.metrics.functional.to_probabilities`.
A batch of logits all inside ``[0, 1]`` cannot be told from probabilities: pass probabilities.

Every state is a per-bin or overall sum, so ``sync()`` (a SUM across ranks) is exact. Before any
sample ``compute()`` is NaN: a calibration error or Brier score of 0 would look perfect.
Labels outside ``[0, C)`` in ``target`` are handled as in :mod:`harness.metrics.classification`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .classification import _check_target, _ClassificationMetric
from .functional import (
    CALIBRATION_NORMS,
    brier_sum,
    calibration_bins,
    calibration_error_from_bins,
    to_probabilities,
)


class CalibrationError(_ClassificationMetric):
    """Calibration error of the top-1 confidence over ``n_bins`` equal-width bins of ``[0, 1]``.

    ``norm="l1"``: the expected calibration error (ECE), the mean over bins, weighted by their
    share of the samples, of ``|accuracy - mean confidence|``; ``"max"``: the largest such gap
    (MCE); ``"l2"``: the root of the weighted mean of its square. Matches torchmetrics'
    ``MulticlassCalibrationError`` (same bins ``[k/M, (k+1)/M)``), except that a confidence of
    exactly 1 falls in the last bin here, not in a bin of its own.

    For ``(N,)`` preds of two classes the top-1 confidence is ``max(p, 1 - p)`` (torchmetrics'
    ``BinaryCalibrationError`` bins ``p`` itself instead).

    States: ``confidence_sum`` (float64), ``correct`` and ``count`` (int64), each ``(n_bins,)``.
    """

    def __init__(self, num_classes: int, n_bins: int = 15, norm: str = "l1") -> None:
        super().__init__(num_classes)
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
        if norm not in CALIBRATION_NORMS:
            raise ValueError(f"norm must be one of {CALIBRATION_NORMS}, got {norm!r}")
        self.n_bins, self.norm = n_bins, norm
        self.add_state("confidence_sum", torch.zeros(n_bins, dtype=torch.float64))
        self.add_state("correct", torch.zeros(n_bins, dtype=torch.int64))
        self.add_state("count", torch.zeros(n_bins, dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch's top-1 confidences and hits to their bins."""
        _check_target(preds, target, self.device)
        probs = to_probabilities(preds.detach(), self.num_classes)
        keep = self._check_labels(torch.zeros_like(target), target)
        confidence_sum, correct, count = calibration_bins(probs, target, self.n_bins, mask=keep)
        self.confidence_sum += confidence_sum
        self.correct += correct
        self.count += count

    def compute(self) -> Tensor:
        """The calibration error as a float64 scalar (NaN before any sample)."""
        self._raise_if_out_of_range()
        return calibration_error_from_bins(self.confidence_sum, self.correct, self.count, self.norm)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, n_bins={self.n_bins}, norm={self.norm!r}"


class BrierScore(_ClassificationMetric):
    """Mean squared error of the predicted probabilities against the one-hot targets.

    For ``num_classes > 2``: the mean over samples of the sum over classes of ``(p_c - y_c)**2``,
    Brier's original definition (from 0 to 2), as ``sklearn.metrics.brier_score_loss`` computes it
    for multiclass targets. For ``num_classes=2``: the mean of ``(p_1 - y)**2`` for class 1, the
    usual binary score (from 0 to 1) and sklearn's ``brier_score_loss`` on binary targets, which is
    half the two-class sum; ``(N,)`` and ``(N, 2)`` preds give the same value.

    States: ``squared_error`` (float64) and ``total`` (int64) scalars.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.add_state("squared_error", torch.zeros((), dtype=torch.float64))
        self.add_state("total", torch.zeros((), dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch's squared errors."""
        _check_target(preds, target, self.device)
        probs = to_probabilities(preds.detach(), self.num_classes)
        keep = self._check_labels(torch.zeros_like(target), target)
        squared_error = brier_sum(probs, target, binary=self.num_classes == 2)
        self.squared_error += torch.where(keep, squared_error, 0.0)
        self.total += keep.long() * target.shape[0]

    def compute(self) -> Tensor:
        """The Brier score as a float64 scalar (NaN before any sample)."""
        self._raise_if_out_of_range()
        return self.squared_error / self.total

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
