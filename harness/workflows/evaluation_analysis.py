"""What a scoring pass's per-sample predictions say beyond the confusion matrix, as plain data.

From `harness.core.predictions.Predictions` (every sample's probabilities and target, on the device):
calibration (the bins of a `CalibrationError` and its ECE), ranking (per-class and averaged AUROC and
average precision, one class against the rest, from the `AUROC` / `AveragePrecision` metrics, and the
ROC curves to draw), the per-sample predictions table (CSV text) and the confident mistakes as
pictures to show. The math is the metrics'; this module only feeds them and lays out the results.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from harness.core.predictions import ConfidentMistakes, Predictions
from harness.metrics import AUROC, AveragePrecision, CalibrationError
from harness.metrics.functional import ranking_curve

CSV_TOP_K = 5  # classes (by probability) per row of the predictions file


def calibration(kept: Predictions, n_bins: int = 15) -> dict[str, Any]:
    """ECE of the top-1 confidence and the bins behind it (a `CalibrationError` fed every sample).

    Returns {"ece", "n_bins", "edges", "count", "correct", "confidence_sum", "accuracy",
    "mean_confidence"}: per-bin lists, the last two None for an empty bin."""
    metric = CalibrationError(kept.probs.shape[1], n_bins=n_bins).to(kept.probs.device)
    metric.update(kept.probs, kept.target)
    count, correct, conf_sum = metric.count.cpu(), metric.correct.cpu(), metric.confidence_sum.cpu()
    filled = count > 0
    return {
        "ece": metric.compute().item(),
        "n_bins": n_bins,
        "edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).tolist(),
        "count": count.tolist(),
        "correct": correct.tolist(),
        "confidence_sum": conf_sum.tolist(),
        "accuracy": [a if f else None for a, f in zip((correct / count.clamp(min=1)).tolist(), filled.tolist(),
                                                      strict=True)],
        "mean_confidence": [c if f else None for c, f in zip((conf_sum / count.clamp(min=1)).tolist(),
                                                             filled.tolist(), strict=True)],
    }


def ranking(kept: Predictions, classes: Sequence[str]) -> dict[str, Any]:
    """AUROC and average precision, each class against the rest, and their average: the macro mean over
    the classes where defined, or for two classes the figure of class 1 (the metrics' default `average`).

    Returns {"auroc", "average_precision", "per_class": {class: {"auroc", "average_precision"}}};
    a class without positive samples (or, for AUROC, without negative ones) has None."""
    num_classes, device = kept.probs.shape[1], kept.probs.device
    values: dict[str, Any] = {}
    per_class: dict[str, list[float | None]] = {}
    for name, cls in (("auroc", AUROC), ("average_precision", AveragePrecision)):
        averaged, each = cls(num_classes).to(device), cls(num_classes, average="none").to(device)
        for metric in (averaged, each):
            metric.update(kept.probs, kept.target)
        values[name] = _number(averaged.compute().item())
        per_class[name] = [_number(v) for v in each.compute().tolist()]
    values["per_class"] = {c: {"auroc": a, "average_precision": p}
                           for c, a, p in zip(classes, per_class["auroc"], per_class["average_precision"],
                                              strict=True)}
    return values


def roc_curves(kept: Predictions) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each class's ROC curve, one against the rest: (false positive rate, true positive rate) arrays
    at every distinct score (the points `AUROC` integrates); a class without positives or negatives
    gives a curve of NaN (not drawn)."""
    tp, fp = ranking_curve(kept.probs, kept.target, kept.probs.shape[1])
    tpr = (tp / tp[:, -1:]).cpu().numpy()
    fpr = (fp / fp[:, -1:]).cpu().numpy()
    return list(zip(fpr, tpr, strict=True))


def predictions_csv(kept: Predictions, classes: Sequence[str], top_k: int = CSV_TOP_K) -> str:
    """The per-sample predictions table as CSV text, one row per sample in split order:
    index (in the split), target, prediction, its probability, then the top-k classes with their
    probabilities (k = min(top_k, classes)); the class names beside target and prediction unless they
    are just the label numbers."""
    k = min(top_k, kept.probs.shape[1])
    top_probs, top_classes = kept.probs.topk(k, dim=1)  # column 0: the prediction
    named = list(classes) != [str(i) for i in range(len(classes))]
    names = np.asarray(classes, dtype=object)
    target, predicted = kept.target.cpu().numpy(), top_classes[:, 0].cpu().numpy()
    header = ["index", "target", *(["target_name"] if named else []), "prediction",
              *(["prediction_name"] if named else []), "probability"]
    columns: list[Any] = [kept.index.tolist(), target.tolist(), *([names[target]] if named else []),
                          predicted.tolist(), *([names[predicted]] if named else []), top_probs[:, 0].tolist()]
    top_classes, top_probs = top_classes.cpu().numpy(), top_probs.cpu().numpy()
    for j in range(k):
        header += [f"top{j + 1}", f"top{j + 1}_probability"]
        columns += [top_classes[:, j].tolist(), top_probs[:, j].tolist()]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns, strict=True))  # the csv module's C writer formats the rows
    return out.getvalue()


def mistake_pictures(mistakes: ConfidentMistakes, classes: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The confident mistakes as (k, C, H, W) images in [0, 1] (each stretched from its own minimum to
    its maximum: the inputs are normalised) and one caption each: index, true and predicted class and
    the predicted class's probability."""
    images = mistakes.inputs.double().flatten(1)
    low, high = images.min(dim=1, keepdim=True).values, images.max(dim=1, keepdim=True).values
    shown = ((images - low) / (high - low).clamp(min=1e-12)).view_as(mistakes.inputs).cpu().numpy()
    captions = [f"#{i}: true {classes[t]}\npredicted {classes[p]} ({c:.3f})" for i, t, p, c in zip(
        mistakes.index.tolist(), mistakes.target.tolist(), mistakes.predicted.tolist(),
        mistakes.confidence.tolist(), strict=True)]
    return shown, captions


def _number(value: float) -> float | None:
    return None if np.isnan(value) else value
