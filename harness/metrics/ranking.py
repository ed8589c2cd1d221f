"""Ranking metrics on class scores: AUROC and average precision, one class against the rest.

``update(preds, target)`` takes ``target`` as integer labels ``(N,)`` and ``preds`` as scores:
``(N, C)`` probabilities or logits, or for ``num_classes=2`` also ``(N,)`` scores of class 1. A
batch holding a value outside ``[0, 1]`` is read as logits (softmax, or sigmoid for ``(N,)``),
torchmetrics' rule, decided on the device: see :func:`harness.metrics.functional.to_probabilities`.

By default the metrics are exact: they keep every score (a list of ``(n, C)`` float64 tensors on
the device, ``8 * C`` bytes a sample) and rank them all in ``compute()``; ``sync()`` gathers the
scores of every rank. ``thresholds=T`` keeps two ``(C, T + 1)`` histograms over ``T`` evenly
spaced thresholds in ``[0, 1]`` instead: memory independent of the data, and exact under a SUM
across ranks, at the price of resolution (scores between two thresholds count as tied).

``num_classes=2`` is the binary problem: the figure is that of class 1, the positive class, as
scikit-learn's binary ``roc_auc_score`` / ``average_precision_score`` report it; ``average="none"``
gives both classes' one-vs-rest values. For ``num_classes > 2``, each class against the rest, then
``average``: ``"macro"`` (plain mean), ``"weighted"`` (by the number of true samples of each class)
or ``"none"`` (the ``(C,)`` values).

A class without positive samples (absent from the targets), or for AUROC without negative samples
(the only class present), has no value: NaN in ``average="none"``, left out of the macro and
weighted averages, without a warning. The average of no defined class is NaN. (scikit-learn
warns and gives NaN for such a class in ``roc_auc_score``, so that its macro average is NaN, and
warns and gives 0 in ``average_precision_score``.)

Labels outside ``[0, C)`` in ``target`` are handled as in :mod:`harness.metrics.classification`:
never counted, a ``ValueError`` names them (in ``update`` on the CPU, in ``compute()`` elsewhere).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .classification import _check_target, _ClassificationMetric
from .functional import (
    RANKING_AVERAGES,
    auroc_from_curve,
    average_classes,
    average_precision_from_curve,
    binned_counts,
    binned_curve,
    ranking_curve,
    to_probabilities,
)


class _RankingMetric(_ClassificationMetric):
    """The scores (exact) or their histograms (binned), and the averaging shared by both metrics.

    States, exact: ``scores`` (a list of ``(n, C)`` float64 probabilities) and ``labels`` (a list
    of ``(n,)`` int64 targets, -1 for a batch not counted), both gathered by ``sync``. Binned:
    ``positives`` and ``negatives``, int64 ``(C, T + 1)`` counts per class and bin, summed by ``sync``.
    """

    def __init__(self, num_classes: int, average: str = "macro", thresholds: int | None = None) -> None:
        super().__init__(num_classes)
        if average not in RANKING_AVERAGES:
            raise ValueError(f"average must be one of {RANKING_AVERAGES}, got {average!r}")
        if thresholds is not None and (
            isinstance(thresholds, bool) or not isinstance(thresholds, int) or thresholds < 2
        ):
            raise ValueError(f"thresholds must be None (exact) or an integer >= 2, got {thresholds!r}")
        self.average = average
        self.thresholds = thresholds
        if thresholds is None:
            self.add_state("scores", torch.zeros(0, num_classes, dtype=torch.float64), reduce="cat")
            self.add_state("labels", torch.zeros(0, dtype=torch.int64), reduce="cat")
        else:
            self.add_state("positives", torch.zeros(num_classes, thresholds + 1, dtype=torch.int64))
            self.add_state("negatives", torch.zeros(num_classes, thresholds + 1, dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Keep one batch's scores (exact), or add them to the histograms (binned)."""
        _check_target(preds, target, self.device)
        probs = to_probabilities(preds.detach(), self.num_classes)
        keep = self._check_labels(torch.zeros_like(target), target)  # scores hold no label to check
        if self.thresholds is None:
            self.scores.append(probs)
            self.labels.append(torch.where(keep, target.long(), -1))
        else:
            grid = torch.linspace(0, 1, self.thresholds, dtype=torch.float64, device=self.device)
            positives, negatives = binned_counts(probs, target, grid, mask=keep)
            self.positives += positives
            self.negatives += negatives

    def _curve(self) -> tuple[Tensor, Tensor]:
        """True and false positives per class and threshold (see ``functional.ranking_curve``)."""
        self._raise_if_out_of_range()
        if self.thresholds is not None:
            return binned_curve(self.positives, self.negatives)
        scores = torch.cat([self._defaults["scores"], *self.scores])
        labels = torch.cat([self._defaults["labels"], *self.labels])
        counted = labels >= 0  # a batch masked off on a GPU; compute() has raised for it already
        return ranking_curve(scores[counted], labels[counted], self.num_classes)

    def _average(self, values: Tensor, tp: Tensor) -> Tensor:
        if self.num_classes == 2 and self.average != "none":
            return values[1]  # the binary figure: class 1 is the positive class
        return average_classes(values, tp[:, -1], self.average)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, average={self.average!r}, thresholds={self.thresholds}"


class AUROC(_RankingMetric):
    """Area under the ROC curve, one class against the rest (see the module docstring).

    Matches ``sklearn.metrics.roc_auc_score``: binary on class 1's scores for ``num_classes=2``,
    ``multi_class="ovr"`` with ``average`` ``"macro"`` / ``"weighted"`` otherwise.
    """

    def compute(self) -> Tensor:
        """A float64 scalar, or ``(C,)`` for ``average="none"``; NaN where undefined."""
        tp, fp = self._curve()
        return self._average(auroc_from_curve(tp, fp), tp)


class AveragePrecision(_RankingMetric):
    """Average precision (the area under the precision-recall curve as a step sum), one class
    against the rest (see the module docstring).

    Matches ``sklearn.metrics.average_precision_score``: binary on class 1's scores for
    ``num_classes=2``; otherwise of each class's one-vs-rest scores, then averaged.
    """

    def compute(self) -> Tensor:
        """A float64 scalar, or ``(C,)`` for ``average="none"``; NaN where undefined."""
        tp, fp = self._curve()
        return self._average(average_precision_from_curve(tp, fp), tp)
