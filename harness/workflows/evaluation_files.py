"""The files `harness.evaluate` writes into a checkpoint's run folder (listed in `harness.workflows.evaluation`).

Every file is written atomically (a temporary file, then a rename). The TensorBoard events go into an
event file of their own (suffix `.eval`) beside the training run's, at step = the checkpoint's epoch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.core.checkpoint import atomic_save
from harness.core.figures import (
    confusion_matrix_figure,
    figure_to_array,
    image_grid_figure,
    per_class_figure,
    reliability_figure,
    roc_figure,
    save_png,
)
from harness.core.loggers import TensorBoardLogger
from harness.core.predictions import Predictions
from harness.recipe.run_folder import results_folder, write_json
from harness.workflows.evaluation_analysis import mistake_pictures, predictions_csv, roc_curves

PER_CLASS_METRICS = ("precision", "recall", "f1")  # one bar chart each (TensorBoard images)


def write_outputs(result: dict[str, Any], summary: dict[str, Any], checkpoint: Path,
                  kept: Predictions) -> dict[str, str]:
    """Write the JSON, the PNGs, the predictions CSV and the TensorBoard events; returns their paths."""
    folder = results_folder(checkpoint)
    split = result["split"]
    stem = f"eval-{checkpoint.stem}-{split}"
    files = {"json": str(folder / f"{stem}.json"), "confusion_png": str(folder / f"{stem}-confusion.png"),
             "reliability_png": str(folder / f"{stem}-reliability.png"),
             "predictions_csv": str(folder / f"predictions-{checkpoint.stem}-{split}.csv"),
             "tensorboard": str(folder)}
    figures = evaluation_figures(result, checkpoint.name)
    figures["roc_curves"] = roc_figure(roc_curves(kept), result["classes"],
                                       [result["per_class"][c]["auroc"] for c in result["classes"]],
                                       title=_title(result, checkpoint.name, "ROC curves, one class against the rest"))
    if kept.mistakes is not None and len(kept.mistakes.index):
        images, captions = mistake_pictures(kept.mistakes, result["classes"])
        figures["confident_mistakes"] = image_grid_figure(
            images, captions, title=_title(result, checkpoint.name, "the most confident mistakes"))
    pictures = {name: figure_to_array(figure) for name, figure in figures.items()}  # each drawn once
    save_png(pictures["confusion_matrix"], files["confusion_png"])
    save_png(pictures["reliability"], files["reliability_png"])
    atomic_save(predictions_csv(kept, result["classes"]).encode(), files["predictions_csv"], raw=True)
    _log_tensorboard(folder, result, pictures, kept)
    write_json(Path(files["json"]), {**result, "files": files})
    return files


def evaluation_figures(result: dict[str, Any], checkpoint_name: str) -> dict[str, Any]:
    """The figures drawn from the report's plain data alone (what the JSON holds): the confusion
    matrix, the reliability diagram and one per-class bar chart per metric, by TensorBoard tag suffix."""
    classes = result["classes"]
    support = [result["per_class"][c]["support"] for c in classes]
    accuracy = f"accuracy {100 * result['accuracy']:.2f} %"
    bins = result["calibration"]
    figures = {
        "confusion_matrix": confusion_matrix_figure(result["confusion_matrix"], classes,
                                                    title=_title(result, checkpoint_name, accuracy)),
        "reliability": reliability_figure(bins["confidence_sum"], bins["correct"], bins["count"],
                                          title=_title(result, checkpoint_name, "reliability")),
    }
    for name in PER_CLASS_METRICS:
        figures[f"per_class/{name}"] = per_class_figure(
            [result["per_class"][c][name] for c in classes], classes, name, support,
            title=_title(result, checkpoint_name, f"{name} per class (support)"))
    return figures


def _title(result: dict[str, Any], checkpoint_name: str, what: str) -> str:
    return f"{checkpoint_name} (epoch {result['epoch']}), {result['split']}: {what}"


def _log_tensorboard(folder: Path, result: dict[str, Any], pictures: dict[str, Any], kept: Predictions) -> None:
    split, step = result["split"], result["epoch"]
    scalars = {name: result[name] for name in ("loss", "accuracy", "top5_accuracy", "ece", "auroc",
                                               "average_precision") if result.get(name) is not None}
    for average, values in result["averages"].items():
        scalars.update({f"{name}_{average}": value for name, value in values.items()})
    writer = TensorBoardLogger(folder, filename_suffix=".eval")
    try:
        for name, picture in pictures.items():
            writer.image(f"eval/{split}/{name}", picture, step)
        for c, name in enumerate(result["classes"]):
            writer.pr_curve(f"eval/{split}/pr_curve/{tag(name)}", kept.target == c, kept.probs[:, c], step)
        writer.log({f"eval/{split}/{name}": value for name, value in scalars.items()}, step)
    finally:
        writer.close()


def tag(name: str) -> str:
    """A class name as a TensorBoard tag part ("0 - zero" -> "0_-_zero"); TensorBoard rejects spaces."""
    return re.sub(r"[^-\w.]+", "_", name)
