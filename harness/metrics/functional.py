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


# --- scores: ranking (AUROC, average precision) and calibration (ECE, Brier) ---------------------

RANKING_AVERAGES = ("macro", "weighted", "none")
CALIBRATION_NORMS = ("l1", "l2", "max")


def to_probabilities(preds: Tensor, num_classes: int) -> Tensor:
    """Class probabilities ``(N, C)`` in float64 from scores of one batch.

    - ``(N, C)`` probabilities, or logits: a batch holding any value outside ``[0, 1]`` is taken
      as logits and goes through ``softmax`` over the classes. This is torchmetrics' rule, decided
      per batch on the device with ``torch.where`` (no host read). A batch of logits that all lie
      in ``[0, 1]`` is read as probabilities: pass probabilities to be sure.
    - ``(N,)`` floats, only for ``num_classes == 2``: the probability ``p`` of class 1 (``sigmoid``
      applied by the same rule), returned as the columns ``1 - p, p``.

    Integer preds are labels, not scores: ``ValueError``, as for any other shape.
    """
    if not preds.is_floating_point():
        raise ValueError(
            f"preds must be float scores (probabilities or logits), got {preds.dtype}: labels carry no ranking"
        )
    scores = preds.double()
    outside = ((scores < 0) | (scores > 1)).any()
    if preds.ndim == 2 and preds.shape[1] == num_classes:
        return torch.where(outside, scores.softmax(dim=1), scores)
    if preds.ndim == 1 and num_classes == 2:
        p = torch.where(outside, scores.sigmoid(), scores)
        return torch.stack([1 - p, p], dim=1)
    if preds.ndim == 1:
        raise ValueError(
            f"float preds of shape (N,) are only accepted for num_classes=2 (scores of class 1), got "
            f"num_classes={num_classes}: pass (N, {num_classes}) scores"
        )
    raise ValueError(f"preds has shape {tuple(preds.shape)}: expected (N, {num_classes}) scores")


def ranking_curve(scores: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """True and false positives of each class one-vs-rest, at every distinct score as threshold.

    ``scores`` ``(N, C)``, ``target`` ``(N,)`` labels in ``[0, C)``. Returns ``tp`` and ``fp``,
    float64 ``(C, N + 1)``: column 0 is the point (0, 0) of a threshold above every score, then
    one column per sample by decreasing score, each holding the counts of the samples scoring at
    least that sample's score. Tied scores therefore give repeated columns (one point of the
    curve, as sklearn's ``roc_curve`` keeps one threshold per distinct score); the areas below
    treat a repeated point as a step of width 0, so ties need no host-side deduplication.
    """
    columns = scores.T.contiguous()  # (C, N): one row of scores per class
    ordered, order = columns.sort(dim=1)
    positive = (target.unsqueeze(0) == torch.arange(num_classes, device=target.device).unsqueeze(1))
    positive = positive.gather(1, order).double()
    # The counts before index j, for j in 0..N: prefix[:, j] = positives among the j lowest scores.
    pos_before = torch.nn.functional.pad(positive.cumsum(dim=1), (1, 0))
    neg_before = torch.nn.functional.pad((1 - positive).cumsum(dim=1), (1, 0))
    # The index of the first of each run of tied scores: the running max of the indices where a run starts.
    index = torch.arange(ordered.shape[1], device=scores.device).expand_as(ordered)
    starts = torch.nn.functional.pad(ordered[:, 1:] != ordered[:, :-1], (1, 0), value=True)
    first_tied = torch.where(starts, index, 0).cummax(dim=1).values
    tp = pos_before[:, -1:] - pos_before.gather(1, first_tied)  # scoring >= the sample's score
    fp = neg_before[:, -1:] - neg_before.gather(1, first_tied)
    pad = (1, 0)
    return torch.nn.functional.pad(tp.flip(1), pad), torch.nn.functional.pad(fp.flip(1), pad)


def binned_counts(
    probs: Tensor, target: Tensor, thresholds: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Histograms of one batch for the binned curves: ``(C, T + 1)`` int64 counts of the positive
    and of the negative samples of each class (one-vs-rest) per bin.

    Bin ``b`` holds the scores with exactly ``b`` of the ``T`` ascending ``thresholds`` at or below
    them, so the samples scoring ``>= thresholds[k]`` are those of bins ``k + 1`` and up.
    ``mask`` (a bool scalar) counts the whole batch or none of it; a target outside ``[0, C)``
    adds to no class's positives.
    """
    num_classes, width = probs.shape[1], thresholds.shape[0] + 1
    bins = torch.searchsorted(thresholds, probs.contiguous(), right=True)  # (N, C) in [0, T]
    classes = torch.arange(num_classes, device=probs.device)
    index = (classes * width + bins).reshape(-1)
    positive = (target.unsqueeze(1) == classes).reshape(-1).long()
    weight = torch.ones_like(positive) if mask is None else mask.long().expand_as(positive)
    pos = torch.zeros(num_classes * width, dtype=torch.int64, device=probs.device)
    neg = torch.zeros_like(pos)
    pos.scatter_add_(0, index, positive * weight)
    neg.scatter_add_(0, index, (1 - positive) * weight)
    return pos.view(num_classes, width), neg.view(num_classes, width)


def binned_curve(pos_hist: Tensor, neg_hist: Tensor) -> tuple[Tensor, Tensor]:
    """``tp`` and ``fp`` float64 ``(C, T + 1)`` from the histograms of :func:`binned_counts`, in the
    layout of :func:`ranking_curve`: the point (0, 0), then the thresholds from the highest down."""
    def at_least(hist: Tensor) -> Tensor:  # counts in bins k + 1 and up, for k = T - 1 down to 0
        return hist[:, 1:].flip(1).cumsum(dim=1).double()

    pad = (1, 0)
    return torch.nn.functional.pad(at_least(pos_hist), pad), torch.nn.functional.pad(at_least(neg_hist), pad)


def auroc_from_curve(tp: Tensor, fp: Tensor) -> Tensor:
    """Area under the ROC curve per class, float64 ``(C,)``, by the trapezoidal rule (sklearn's
    ``roc_auc_score``); NaN for a class without positive or without negative samples.

    The area is summed in counts and divided once, so it is exact up to float64 rounding."""
    positives, negatives = tp[:, -1], fp[:, -1]
    area = ((fp[:, 1:] - fp[:, :-1]) * (tp[:, 1:] + tp[:, :-1])).sum(dim=1) / 2
    undefined = (positives == 0) | (negatives == 0)
    return torch.where(undefined, torch.full_like(area, float("nan")), area / (positives * negatives))


def average_precision_from_curve(tp: Tensor, fp: Tensor) -> Tensor:
    """Average precision per class, float64 ``(C,)``: the sum over thresholds of the increase in
    recall times the precision there (sklearn's ``average_precision_score``, no interpolation);
    NaN for a class without positive samples (sklearn warns and returns 0 there)."""
    positives = tp[:, -1]
    precision = safe_divide(tp[:, 1:], tp[:, 1:] + fp[:, 1:])
    summed = ((tp[:, 1:] - tp[:, :-1]) * precision).sum(dim=1)
    return torch.where(positives == 0, torch.full_like(summed, float("nan")), summed / positives)


def average_classes(values: Tensor, support: Tensor, average: str) -> Tensor:
    """Average per-class values ``(C,)`` over the classes where they are defined (not NaN).

    ``"macro"``: their plain mean; ``"weighted"``: weighted by ``support`` (each class's number of
    true samples); ``"none"``: ``values`` as they are. NaN when no class has a value.
    """
    if average == "none":
        return values
    defined = ~values.isnan()
    weights = defined.double() if average == "macro" else support.double() * defined
    if average not in RANKING_AVERAGES:
        raise ValueError(f"average must be one of {RANKING_AVERAGES}, got {average!r}")
    total = weights.sum()
    mean = (torch.where(defined, values, 0.0) * weights).sum() / total
    return torch.where(total > 0, mean, torch.full_like(mean, float("nan")))


def calibration_bins(
    probs: Tensor, target: Tensor, n_bins: int, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch's per-bin sums of the top-1 confidence: float64 ``(n_bins,)`` confidence sums,
    int64 ``(n_bins,)`` counts of correct top-1 predictions and of samples.

    Bins are ``[k / n_bins, (k + 1) / n_bins)``, the last one closed at 1 (torchmetrics puts a
    confidence of exactly 1 in a bin of its own; here it belongs to the last bin). ``mask`` (a
    bool scalar) counts the whole batch or none of it.
    """
    confidence, predicted = probs.max(dim=1)
    index = calibration_bin_index(confidence, n_bins)
    weight = torch.ones_like(index) if mask is None else mask.long().expand_as(index)
    correct = (predicted == target).long() * weight
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=probs.device)
    conf_sum.scatter_add_(0, index, torch.where(weight > 0, confidence, 0.0))
    correct_sum = torch.zeros(n_bins, dtype=torch.int64, device=probs.device).scatter_add_(0, index, correct)
    count = torch.zeros(n_bins, dtype=torch.int64, device=probs.device).scatter_add_(0, index, weight)
    return conf_sum, correct_sum, count


def calibration_bin_index(confidence: Tensor, n_bins: int) -> Tensor:
    """The bin of each top-1 confidence: ``[k / n_bins, (k + 1) / n_bins)``, the last one closed at 1."""
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=confidence.device)
    return (torch.bucketize(confidence, boundaries, right=True) - 1).clamp(0, n_bins - 1)


def calibration_error_from_bins(conf_sum: Tensor, correct_sum: Tensor, count: Tensor, norm: str) -> Tensor:
    """The calibration error from per-bin sums: over the bins, the gap between accuracy and mean
    confidence, ``"l1"``: weighted by the bins' shares of the samples (ECE), ``"l2"``: the square
    root of the weighted mean of its square, ``"max"``: the largest (MCE; an empty bin has no gap).
    A float64 scalar, NaN before any sample (a calibration error of 0 would look perfect). The bins
    are the last dimension: ``(B, n_bins)`` sums give the ``(B,)`` errors of B sets of bins at once."""
    gap = (safe_divide(correct_sum, count) - safe_divide(conf_sum, count)).abs()
    share = count.double() / count.sum(dim=-1, keepdim=True)
    if norm == "l1":
        return (gap * share).sum(dim=-1)
    if norm == "l2":
        return (gap.square() * share).sum(dim=-1).sqrt()
    if norm == "max":
        return torch.where(count.sum(dim=-1) > 0, gap.max(dim=-1).values, float("nan"))
    raise ValueError(f"norm must be one of {CALIBRATION_NORMS}, got {norm!r}")


def brier_sum(probs: Tensor, target: Tensor, binary: bool) -> Tensor:
    """The float64 sum over samples of the squared error of the probabilities: summed over the
    classes (Brier's definition), or for ``binary`` over class 1 only (sklearn's binary
    ``brier_score_loss``, half the two-class sum). A target outside ``[0, C)`` is one-hot nowhere."""
    onehot = (target.unsqueeze(1) == torch.arange(probs.shape[1], device=probs.device)).double()
    squared = (probs - onehot).square()
    return squared[:, 1].sum() if binary else squared.sum()
