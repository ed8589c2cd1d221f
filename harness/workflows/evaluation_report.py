"""The printed report of `harness.evaluate`, from the plain data `evaluate` returns."""

from __future__ import annotations

import re
from typing import Any

from harness.core.speed import format_speed
from harness.metrics.report import (
    classification_summary,
    format_classification_report,
    format_confused_pairs,
    format_confusion_matrix,
    format_table,
)


def format_evaluation(result: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """What was scored, the classification table, each scalar with its interval, calibration and ranking,
    the confusion matrix and its most confused pairs, speed, and the files written."""
    summary = summary or classification_summary(result["confusion_matrix"], result["classes"])
    head = (f"# {result['checkpoint']} (epoch {result['epoch']}, {result['weights']})\n"
            f"# {result['split']} split: {result['num_samples']} samples on {result['device']} "
            f"in {result['eval_seconds']:.2f} s")
    parts = [head, "", format_classification_report(summary), "", *_scalars(result)]
    if "calibration" in result:
        parts += ["", *_calibration_and_ranking(result)]
    parts += ["", "confusion matrix (rows: true class, columns: predicted class index)",
              format_confusion_matrix(result["confusion_matrix"], result["classes"])]
    if "confused_pairs" in result:
        parts += ["", "# most confused pairs (true class -> predicted class; share of the true class's samples)",
                  format_confused_pairs(result["confused_pairs"])]
    if "speed" in result:
        parts += ["", "# inference speed", format_speed(result["speed"])]
    skipped = result.get("mistakes", {}).get("skipped")
    if skipped:
        parts += ["", f"note: no grid of confident mistakes in TensorBoard: {skipped}"]
    if "files" in result:
        files = result["files"]
        parts += ["", *(f"wrote {files[key]}" for key in ("json", "confusion_png", "reliability_png",
                                                           "predictions_csv")),
                  f"TensorBoard: eval/{result['split']}/* at step {result['epoch']} in {files['tensorboard']}"]
    return "\n".join(parts)


def _scalars(result: dict[str, Any]) -> list[str]:
    lines = [f"loss {result['loss']:.4f} (no interval: per-sample losses are not kept)"]
    names = ["accuracy", *(name for name in result if re.fullmatch(r"top\d+_accuracy", name))]
    names += [f"{name}_{average}" for average in ("macro", "weighted") for name in ("precision", "recall", "f1")]
    names += [name for name in ("ece", "auroc", "average_precision") if name in result]
    value = {**result, **{f"{name}_{average}": result["averages"][average][name]
                          for average in ("macro", "weighted") for name in ("precision", "recall", "f1")}}
    bounds = result.get("intervals", {})
    if bounds:
        lines.insert(0, f"# {100 * bounds['confidence']:g} % intervals over the test samples")
    width = max(len(name) for name in names)
    for name in names:
        if name in bounds:
            low, high = bounds[name]
            lines.append(f"{name:<{width}} {_number(value[name])} [{_number(low)}, {_number(high)}]  "
                         f"{bounds['methods'][name]}")
    return lines


def _calibration_and_ranking(result: dict[str, Any]) -> list[str]:
    average = (f"class {result['classes'][1]}'s" if len(result["classes"]) == 2
               else "the macro mean over the classes")
    rows = [[name, _number(v["auroc"]), _number(v["average_precision"])] for name, v in result["per_class"].items()]
    return [f"ece: of the top-1 confidence, {result['calibration']['n_bins']} equal-width bins",
            f"auroc, average_precision: each class against the rest, {average}",
            "", format_table(["class", "auroc", "average precision"], rows)]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
