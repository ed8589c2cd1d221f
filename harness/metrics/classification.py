"""Single-label classification metrics: accuracy, precision, recall, F1, confusion matrix.

``update(preds, target)`` takes ``target`` as integer labels ``(N,)`` and ``preds`` as

- ``(N, C)`` logits or probabilities (the argmax is the predicted class), or
- ``(N,)`` integer labels, or
- ``(N,)`` float probabilities of class 1, only for ``num_classes=2``: class 1 where ``p > 0.5``.
  Logits are not detected (that needs the values on the host): apply ``sigmoid`` first.

Shapes are checked in ``update`` (``ValueError``). A label outside ``[0, C)``, in ``target`` or
in integer ``preds``, is never counted: a batch holding one leaves every count as it was, and
a ``ValueError`` names the offending values, whether they are preds or target, and the range.
Where it is raised depends on where the states live:

- on the CPU, ``update`` raises before touching any state (the values are on the host already,
  reading them costs nothing); the metric stays usable;
- on a GPU, reading the labels in ``update`` would wait for the device every batch, so the
  batch's counts are masked off on the device and it is recorded in three states:
  ``out_of_range`` (how many labels of preds and of target were out of range),
  ``out_of_range_min`` and ``out_of_range_max`` (the smallest and largest of them). ``compute()``
  raises from that record; ``sync()`` merges it across ranks first, so every rank raises.
  ``reset()`` clears it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Metric, check_device
from .functional import (
    AVERAGES,
    INT64_MAX,
    INT64_MIN,
    NORMALIZE_MODES,
    add_to_confusion_matrix,
    normalize_confusion_matrix,
    out_of_range,
    precision_recall_f1_from_confmat,
    to_labels,
    topk_correct,
)


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _check_average(average: str, num_classes: int) -> None:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    if average == "binary" and num_classes != 2:
        raise ValueError(
            f"average='binary' needs num_classes=2, got num_classes={num_classes}: "
            "use 'micro', 'macro', 'weighted' or 'none'"
        )


def _check_target(preds: Tensor, target: Tensor, device: torch.device) -> None:
    if target.ndim != 1 or target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"target must be integer class labels of shape (N,), got {target.dtype} "
            f"{tuple(target.shape)}: use target.long()"
        )
    if preds.shape[:1] != target.shape[:1]:
        raise ValueError(
            f"preds and target disagree on N: preds {tuple(preds.shape)}, "
            f"target {tuple(target.shape)}"
        )
    check_device(device, preds=preds, target=target)


def _check_eagerly(device: torch.device) -> bool:
    """Whether ``update`` reads the labels on the host: on the CPU they are there already."""
    return device.type == "cpu"


class _ClassificationMetric(Metric):
    """``num_classes`` and the record of out-of-range labels, shared by every metric here.

    States ``out_of_range``, ``out_of_range_min`` and ``out_of_range_max``: int64 ``(2,)``, for
    preds and for target, the number of labels outside ``[0, C)`` and the smallest and largest
    of them (merged across ranks with SUM, MIN and MAX). They stay at their defaults on the CPU,
    where ``update`` raises instead (see the module docstring).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.add_state("out_of_range", torch.zeros(2, dtype=torch.int64))
        self.add_state("out_of_range_min", torch.full((2,), INT64_MAX), reduce="min")
        self.add_state("out_of_range_max", torch.full((2,), INT64_MIN), reduce="max")

    def _check_labels(self, pred_labels: Tensor, target: Tensor) -> Tensor:
        """A bool scalar on the states' device: whether every label of the batch is in range.

        The caller counts the batch only where it is True. On the CPU an out-of-range label
        raises here, before any state changes; elsewhere it is recorded for ``compute()``.
        """
        labels = torch.stack([pred_labels.long(), target.long()])
        counts, lowest, highest = out_of_range(labels, self.num_classes)
        if _check_eagerly(self.device):
            if counts.any():
                raise ValueError(
                    self._out_of_range_message(counts, lowest, highest, "the batch was not counted")
                )
        else:
            self.out_of_range += counts
            torch.minimum(self.out_of_range_min, lowest, out=self.out_of_range_min)
            torch.maximum(self.out_of_range_max, highest, out=self.out_of_range_max)
        return counts.sum() == 0

    def _raise_if_out_of_range(self) -> None:
        """Raise the error that ``update`` deferred, if an out-of-range label is on record."""
        if self.out_of_range.any():  # note: a CPU-GPU sync point, once per compute()
            raise ValueError(
                self._out_of_range_message(
                    self.out_of_range,
                    self.out_of_range_min,
                    self.out_of_range_max,
                    "the batches holding them were not counted; reset() starts over",
                )
            )

    def _out_of_range_message(
        self, counts: Tensor, lowest: Tensor, highest: Tensor, consequence: str
    ) -> str:
        """One line: for preds and target, how many labels were out of range and which."""
        allowed = f"[0, {self.num_classes})"
        parts = []
        summary = zip(counts.tolist(), lowest.tolist(), highest.tolist(), strict=True)
        for name, (count, low, high) in zip(("preds", "target"), summary, strict=True):
            if count:
                values = str(low) if low == high else f"lowest {low}, highest {high}"
                labels = "label" if count == 1 else "labels"
                parts.append(f"{name} has {count} {labels} outside {allowed}: {values}")
        head = f"{type(self).__name__}(num_classes={self.num_classes})"
        return f"{head}: {'; '.join(parts)}; {consequence}"


class Accuracy(_ClassificationMetric):
    """Fraction of samples whose true class is predicted (or among the ``top_k`` highest scores).

    States: ``correct`` and ``total`` (int64 counts), and the out-of-range record described in
    the module docstring. Matches ``sklearn.metrics.accuracy_score``
    and, for ``top_k > 1``, ``top_k_accuracy_score(labels=range(num_classes))``.
    ``top_k > 1`` needs ``(N, C)`` scores. ``compute()`` is 0 before any sample is seen.
    """

    def __init__(self, num_classes: int, top_k: int = 1) -> None:
        super().__init__(num_classes)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
            raise ValueError(
                f"top_k must be an integer in [1, num_classes={num_classes}], got {top_k!r}"
            )
        self.top_k = top_k
        self.add_state("correct", torch.zeros((), dtype=torch.int64))
        self.add_state("total", torch.zeros((), dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count the correct predictions of one batch."""
        _check_target(preds, target, self.device)
        if self.top_k == 1:
            pred_labels = to_labels(preds, self.num_classes)
        else:
            if preds.ndim != 2 or preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"top_k={self.top_k} needs preds of shape (N, {self.num_classes}) scores, "
                    f"got {tuple(preds.shape)}"
                )
            pred_labels = torch.zeros_like(target)  # scores hold no label to check
        keep = self._check_labels(pred_labels, target).long()  # 0: the batch is not counted
        if self.top_k == 1:
            correct = (pred_labels == target).sum()
        else:
            correct = topk_correct(preds, target, self.top_k)
        self.correct += correct * keep
        self.total += keep * target.shape[0]

    def compute(self) -> Tensor:
        """Accuracy as a float64 scalar tensor; ``ValueError`` if an out-of-range label was seen."""
        self._raise_if_out_of_range()
        return self.correct.double() / self.total.clamp_min(1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, top_k={self.top_k}"


class _ConfmatState(_ClassificationMetric):
    """State and update shared by the confusion-matrix metrics: one ``(C, C)`` int64 count matrix.

    Precision, recall and F1 read TP, FP and FN of every class off this matrix in ``compute``,
    so every average comes from the same state and summing it across ranks is exact.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch's (true, predicted) pairs to the counts."""
        _check_target(preds, target, self.device)
        pred_labels = to_labels(preds, self.num_classes)
        keep = self._check_labels(pred_labels, target)
        add_to_confusion_matrix(self.confmat, pred_labels, target, mask=keep)

    def _checked_confmat(self) -> Tensor:
        """The count matrix, once no out-of-range label is on record (else ``ValueError``)."""
        self._raise_if_out_of_range()
        return self.confmat


class ConfusionMatrix(_ConfmatState):
    """``(C, C)`` confusion matrix, rows = true class, columns = predicted (sklearn's layout).

    ``normalize``: ``None`` gives int64 counts; ``"true"`` / ``"pred"`` / ``"all"`` give float64
    fractions over each row / column / the whole matrix, 0 where the sum is 0 — the same as
    ``sklearn.metrics.confusion_matrix(labels=range(num_classes), normalize=...)``.
    """

    def __init__(self, num_classes: int, normalize: str | None = None) -> None:
        super().__init__(num_classes)
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        self.normalize = normalize

    def compute(self) -> Tensor:
        """The counts (a copy), or the normalized matrix."""
        return normalize_confusion_matrix(self._checked_confmat().clone(), self.normalize)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, normalize={self.normalize!r}"


class _AveragedConfmatMetric(_ConfmatState):
    """Base of Precision, Recall and F1Score: the confusion-matrix state plus an ``average``."""

    def __init__(self, num_classes: int, average: str = "macro") -> None:
        super().__init__(num_classes)
        _check_average(average, num_classes)
        self.average = average

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, average={self.average!r}"


class Precision(_AveragedConfmatMetric):
    """TP / (TP + FP), as ``sklearn.metrics.precision_score(labels=range(C), zero_division=0)``.

    ``average`` is one of ``"micro" | "macro" | "weighted" | "none" | "binary"``; ``"macro"``
    averages over all ``num_classes`` classes, present in the data or not, and ``"binary"``
    (``num_classes=2`` only) reports class 1. See
    :func:`harness.metrics.functional.precision_recall_f1_from_confmat`.
    """

    def compute(self) -> Tensor:
        """A float64 scalar, or a ``(C,)`` tensor for ``average="none"``; 0 where undefined."""
        precision, _, _ = precision_recall_f1_from_confmat(self._checked_confmat(), self.average)
        return precision


class Recall(_AveragedConfmatMetric):
    """TP / (TP + FN), as ``sklearn.metrics.recall_score(labels=range(C), zero_division=0)``.

    ``average`` as in :class:`Precision`.
    """

    def compute(self) -> Tensor:
        """A float64 scalar, or a ``(C,)`` tensor for ``average="none"``; 0 where undefined."""
        _, recall, _ = precision_recall_f1_from_confmat(self._checked_confmat(), self.average)
        return recall


class F1Score(_AveragedConfmatMetric):
    """2TP / (2TP + FP + FN), as ``sklearn.metrics.f1_score(labels=range(C), zero_division=0)``.

    ``average`` as in :class:`Precision`; macro averages the per-class F1 (not the F1 of the
    macro precision and recall), as sklearn does.
    """

    def compute(self) -> Tensor:
        """A float64 scalar, or a ``(C,)`` tensor for ``average="none"``; 0 where undefined."""
        _, _, f1 = precision_recall_f1_from_confmat(self._checked_confmat(), self.average)
        return f1
