"""Pure metric math on tensors: no state, no host syncs, no imports from the rest of harness.

Conventions shared by every function here:

- A confusion matrix has rows = true class and columns = predicted class (as in sklearn).
- A ratio whose denominator is 0 is 0, like sklearn's ``zero_division=0``
  (a class that never occurs and is never predicted has precision = recall = F1 = 0).
- Ratios are float64, so counts above 2**24 stay exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

AVERAGES = ("micro", "macro", "weighted", "none", "binary")
NORMALIZE_MODES = (None, "true", "pred", "all")
INT64_MIN, INT64_MAX = torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max


def to_labels(preds: Tensor, num_classes: int, threshold: float = 0.5) -> Tensor:
    """Turn predictions into int64 class labels of shape ``(N,)``.

    - ``(N, C)`` scores (logits or probabilities): ``argmax`` over classes (first index wins ties).
    - ``(N,)`` integer or bool tensor: already labels.
    - ``(N,)`` float tensor, only when ``num_classes == 2``: probabilities of class 1;
      label 1 where ``p > threshold``. Logits are NOT detected (that would need a look at
      the values, i.e. a host sync): apply ``sigmoid`` first, or pass ``(N, 2)`` scores.

    Raises ``ValueError`` for any other shape. Only metadata is inspected, so no sync.
    """
    if preds.ndim == 2:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"preds has shape {tuple(preds.shape)}: expected (N, {num_classes}) scores "
                f"for num_classes={num_classes}"
            )
        return preds.argmax(dim=1)
    if preds.ndim == 1:
        if not preds.is_floating_point():
            return preds.long()
        if num_classes == 2:
            return (preds > threshold).long()
        raise ValueError(
            f"float preds of shape (N,) are only accepted for num_classes=2 (probabilities of "
            f"class 1), got num_classes={num_classes}: pass (N, C) scores or integer labels"
        )
    raise ValueError(f"preds has shape {tuple(preds.shape)}: expected (N, C) scores or (N,) labels")


def out_of_range(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which labels lie outside ``[0, num_classes)``, summarized per row of ``labels`` ``(R, N)``.

    Returns three int64 ``(R,)`` tensors on the labels' device: how many labels of each row are
    out of range, the smallest and the largest of them. A row with none gives the identities of
    min and max (int64 max and int64 min), so the summaries of several batches (or ranks) merge
    exactly with sum, min and max. Nothing is read on the host.
    """
    labels = labels.long()
    bad = (labels < 0) | (labels >= num_classes)
    # Each row gets one identity column, so that a row of N = 0 labels still has a min and a max.
    max_column = torch.full((labels.shape[0], 1), INT64_MAX, device=labels.device)
    min_column = torch.full((labels.shape[0], 1), INT64_MIN, device=labels.device)
    lowest = torch.cat([torch.where(bad, labels, max_column), max_column], dim=1).amin(dim=1)
    highest = torch.cat([torch.where(bad, labels, min_column), min_column], dim=1).amax(dim=1)
    return bad.sum(dim=1), lowest, highest


def add_to_confusion_matrix(
    confmat: Tensor, pred_labels: Tensor, target: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Add the counts of ``(target, pred_labels)`` pairs to ``confmat`` in place and return it.

    ``confmat`` is a contiguous ``(C, C)`` int64 tensor on the same device as the labels.
    ``mask`` (a bool tensor broadcastable to ``(N,)``, e.g. one scalar for the whole batch)
    selects the pairs to count; without it every pair is counted. A counted pair with a label
    outside ``[0, C)`` makes this fail loudly (RuntimeError on CPU, device-side assert on
    CUDA), as ``F.cross_entropy`` does: checking on the host would need a sync. The metrics
    check their labels with :func:`out_of_range` and mask off a batch that has such a label.
    """
    num_classes = confmat.shape[0]
    pred_labels, target = pred_labels.long(), target.long()
    index = target * num_classes + pred_labels
    valid = (
        (target >= 0) & (target < num_classes) & (pred_labels >= 0) & (pred_labels < num_classes)
    )
    # An invalid pair is sent to index C*C, one past the end, so scatter_add_ rejects it
    # instead of silently counting it in a wrong cell. scatter_add_ (not bincount) because
    # bincount must read max(index) on the host to size its output: a sync on CUDA.
    index = torch.where(valid, index, num_classes * num_classes)
    if mask is None:
        counts = torch.ones_like(index)
    else:
        index = torch.where(mask, index, 0)  # a pair left out adds 0, to any cell in range
        counts = mask.expand_as(index).long()
    confmat.view(-1).scatter_add_(0, index, counts)
    return confmat


def confusion_matrix(pred_labels: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class (sklearn's layout)."""
    confmat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=target.device)
    return add_to_confusion_matrix(confmat, pred_labels, target)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` in float64, with 0 wherever ``den == 0`` (sklearn's ``zero_division=0``)."""
    num, den = num.double(), den.double()
    return torch.where(den == 0, torch.zeros_like(num), num / den)


def normalize_confusion_matrix(confmat: Tensor, normalize: str | None) -> Tensor:
    """Normalize counts like ``sklearn.metrics.confusion_matrix(normalize=...)``.

    ``"true"``: each row sums to 1; ``"pred"``: each column; ``"all"``: the whole matrix;
    ``None``: the counts unchanged. An all-zero row/column/matrix stays 0.
    """
    if normalize is None:
        return confmat
    if normalize == "true":
        return safe_divide(confmat, confmat.sum(dim=1, keepdim=True).expand_as(confmat))
    if normalize == "pred":
        return safe_divide(confmat, confmat.sum(dim=0, keepdim=True).expand_as(confmat))
    if normalize == "all":
        return safe_divide(confmat, confmat.sum().expand_as(confmat))
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")


def precision_recall_f1_from_confmat(
    confmat: Tensor, average: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall and F1 (float64) from a ``(C, C)`` confusion matrix.

    ``average``:

    - ``"none"``: per-class tensors of shape ``(C,)``.
    - ``"macro"``: unweighted mean over ALL ``C`` classes. sklearn averages over the labels
      present in ``y_true`` or ``y_pred`` unless ``labels=range(C)`` is passed; with it, the
      two agree. A class that never occurs and is never predicted counts as 0.
    - ``"weighted"``: mean weighted by each class's support (its number of true samples).
    - ``"micro"``: from the summed TP/FP/FN; for single-label multiclass all three equal accuracy.
    - ``"binary"``: the values of class 1 (``C`` must be 2), sklearn's default ``pos_label=1``.

    F1 is ``2TP / (2TP + FP + FN)``, per class before averaging (as sklearn does).
    """
    tp = confmat.diagonal()
    predicted = confmat.sum(dim=0)  # TP + FP per class
    support = confmat.sum(dim=1)  # TP + FN per class
    if average == "micro":
        tp, predicted, support = tp.sum(), predicted.sum(), support.sum()
    precision = safe_divide(tp, predicted)
    recall = safe_divide(tp, support)
    f1 = safe_divide(2 * tp, predicted + support)
    if average in ("micro", "none"):
        return precision, recall, f1
    if average == "macro":
        return precision.mean(), recall.mean(), f1.mean()
    if average == "weighted":
        weights = safe_divide(support, support.sum().expand_as(support))
        return (precision * weights).sum(), (recall * weights).sum(), (f1 * weights).sum()
    if average == "binary":
        if confmat.shape[0] != 2:
            raise ValueError(f"average='binary' needs num_classes=2, got {confmat.shape[0]}")
        return precision[1], recall[1], f1[1]
    raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")


def topk_correct(scores: Tensor, target: Tensor, k: int) -> Tensor:
    """Number of rows whose true class is among the ``k`` highest of ``scores`` ``(N, C)``.

    int64 scalar. Ties among scores are broken by ``torch.topk``, in no documented order.
    """
    topk = scores.topk(k, dim=1).indices
    return (topk == target.unsqueeze(1)).any(dim=1).sum()
