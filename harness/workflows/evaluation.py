"""Score a checkpoint on a split: the work of `python -m harness.evaluate`, as a Python function.

Builds the model and data from the recipe (the same builders as `harness.train`), loads the
checkpoint's weights and runs the Trainer's validation pass over the whole split, counting one
confusion matrix. From it: accuracy, precision / recall / F1 per class and micro / macro / weighted
averaged (sklearn's `classification_report`, the same numbers), plus the loss and top-5 accuracy.

Weights: the raw model weights, or the EMA average when the recipe has `trainer.ema` (the
checkpoint must then hold one). The recipe's `limit_val_batches`, `fast_dev_run` and
`overfit_batches` are training budgets and are ignored: the whole split is scored.

Files, in the run folder of the checkpoint (`<run>/checkpoints/best.pt` -> `<run>/`; a checkpoint
elsewhere: its own folder), named after the checkpoint and the split so that evaluating best and
last, or test and val, keeps every result:

    eval-<checkpoint>-<split>.json           everything printed, as plain data (+ "speed" with --speed)
    eval-<checkpoint>-<split>-confusion.png  the confusion matrix, rows normalised to 100 %
    events.out.tfevents.*.eval               TensorBoard, at step = the checkpoint's epoch:
                                             eval/<split>/confusion_matrix (image),
                                             eval/<split>/{loss,accuracy,top5_accuracy},
                                             eval/<split>/{precision,recall,f1}_{micro,macro,weighted},
                                             eval/<split>/{precision,recall,f1}/<class>

`evaluate(recipe, checkpoint)` returns that data.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from harness.core.figures import confusion_matrix_figure, figure_to_array, save_figure
from harness.core.loggers import TensorBoardLogger
from harness.core.speed import format_speed, measure_inference
from harness.metrics.report import classification_summary, format_classification_report, format_confusion_matrix
from harness.recipe.parts import build_evaluation, setup
from harness.recipe.run_folder import results_folder, write_json
from harness.recipe.schema import MetricConfig, Recipe, load_recipe
from harness.stats import batched_precision_recall_f1, percentile_interval, resample_confmat, wilson_interval

TOP_K = 5  # top-k accuracy is reported when there are more than this many classes
CONFIDENCE = 0.95  # of every interval reported
RESAMPLES = 1000  # bootstrap resamples: the interval's ends move by about 0.1 % of its width between seeds


def evaluate(recipe: Recipe | str | Path, checkpoint: str | Path, split: str = "test", *, speed: bool = False,
             write: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Score `checkpoint` on the recipe's `split` ("test" or "val"); returns plain data.

    `recipe` is a validated `Recipe` or the path of a YAML file. With `write` (default) the JSON,
    the PNG and the TensorBoard events go into the checkpoint's run folder; `verbose` prints the
    report. `speed=True` adds `measure_inference` at batch sizes 1 and `data.eval_batch_size`.
    Bad input (missing or corrupt checkpoint, a checkpoint of another model) raises HarnessError.

    Returns {"checkpoint", "epoch", "weights", "split", "num_samples", "device", "loss", "accuracy",
    "top5_accuracy" (more than 5 classes), "averages": {micro|macro|weighted: {precision, recall, f1}},
    "per_class": {class name: {precision, recall, f1, support}}, "classes", "confusion_matrix"
    (counts, rows = true class), "eval_seconds", "files", "speed" (with speed=True)}.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    checkpoint = Path(checkpoint)
    # Under torchrun each rank scores its shard (no padding) and the counts are summed: exact.
    env = setup(recipe)
    write, verbose, speed = write and env.dist.is_main, verbose and env.dist.is_main, speed and env.dist.is_main
    parts = build_evaluation(recipe, env, checkpoint, split, report_metrics)
    started = time.perf_counter()
    scores = parts.evaluator.validate(parts.loader, prefix=split)
    eval_seconds = time.perf_counter() - started

    confmat = scores[f"{split}/confusion_matrix"]
    summary = classification_summary(confmat, parts.data.classes)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "epoch": parts.state["epoch"],
        "weights": parts.weights,
        "split": split,
        "num_samples": summary["support"],
        "device": str(env.device),
        "loss": scores[f"{split}/loss"],
        "accuracy": summary["accuracy"],
    }
    if f"{split}/top{TOP_K}" in scores:
        result[f"top{TOP_K}_accuracy"] = scores[f"{split}/top{TOP_K}"]
    result.update(averages=summary["averages"], per_class=summary["per_class"], classes=list(parts.data.classes),
                  confusion_matrix=confmat, eval_seconds=round(eval_seconds, 3))
    result["intervals"] = intervals(result, confmat)
    if speed:
        inputs, _ = next(iter(parts.loader))
        # timed as the run computes: the recipe's precision and memory format
        result["speed"] = measure_inference(parts.model, inputs, batch_sizes=(1, recipe.data.eval_batch_size),
                                            device=env.device, precision=recipe.trainer.precision,
                                            channels_last=recipe.trainer.channels_last)
    if write:
        result["files"] = _write_outputs(result, summary, checkpoint)
    if verbose:
        print(format_evaluation(result, summary), flush=True)
    return result


def intervals(result: dict[str, Any], confmat: list[list[int]], confidence: float = CONFIDENCE,
              n_resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """How sure each scalar figure is, over the sampling of the test set: accuracy and top-k accuracy
    (proportions) by the Wilson score interval; the averaged precision, recall and F1 by the
    percentile bootstrap of the samples, drawn from the confusion matrix (`harness.stats`). The loss
    gets none: its per-sample values are not kept."""
    n = result["num_samples"]
    correct = sum(confmat[i][i] for i in range(len(confmat)))
    out: dict[str, Any] = {"confidence": confidence, "accuracy": [*wilson_interval(correct, n, confidence)]}
    methods = {"accuracy": "Wilson score"}
    if f"top{TOP_K}_accuracy" in result:
        hits = round(result[f"top{TOP_K}_accuracy"] * n)
        out[f"top{TOP_K}_accuracy"] = [*wilson_interval(hits, n, confidence)]
        methods[f"top{TOP_K}_accuracy"] = "Wilson score"
    resamples = resample_confmat(confmat, n_resamples=n_resamples, seed=seed)
    for average in ("macro", "weighted"):
        values = batched_precision_recall_f1(resamples, average)
        for name, value in zip(("precision", "recall", "f1"), values, strict=True):
            out[f"{name}_{average}"] = [*percentile_interval(value, confidence)]
            methods[f"{name}_{average}"] = f"percentile bootstrap, {n_resamples} resamples, seed {seed}"
    out["methods"] = methods
    return out


def report_metrics(num_classes: int) -> dict[str, MetricConfig]:
    """The metrics a report needs instead of the recipe's training-log metrics: one confusion matrix
    gives every per-class and averaged figure; top-5 accuracy when there are more than 5 classes."""
    metrics = {"confusion_matrix": MetricConfig(type="confusion_matrix")}
    if num_classes > TOP_K:
        metrics[f"top{TOP_K}"] = MetricConfig(type="accuracy", top_k=TOP_K)
    return metrics


def _write_outputs(result: dict[str, Any], summary: dict[str, Any], checkpoint: Path) -> dict[str, str]:
    folder = results_folder(checkpoint)
    split, epoch = result["split"], result["epoch"]
    stem = f"eval-{checkpoint.stem}-{split}"
    files = {"json": str(folder / f"{stem}.json"), "confusion_png": str(folder / f"{stem}-confusion.png"),
             "tensorboard": str(folder)}
    title = f"{checkpoint.name} (epoch {epoch}), {split}: accuracy {100 * result['accuracy']:.2f} %"
    figure = confusion_matrix_figure(result["confusion_matrix"], result["classes"], title=title)
    save_figure(figure, files["confusion_png"])
    _log_tensorboard(folder, result, summary, figure_to_array(figure))
    write_json(Path(files["json"]), {**result, "files": files})
    return files


def _log_tensorboard(folder: Path, result: dict[str, Any], summary: dict[str, Any], image: Any) -> None:
    split, step = result["split"], result["epoch"]
    scalars = {"loss": result["loss"], "accuracy": result["accuracy"]}
    if f"top{TOP_K}_accuracy" in result:
        scalars[f"top{TOP_K}_accuracy"] = result[f"top{TOP_K}_accuracy"]
    for average, values in summary["averages"].items():
        scalars.update({f"{name}_{average}": value for name, value in values.items()})
    for cls, values in summary["per_class"].items():
        scalars.update({f"{name}/{_tag(cls)}": values[name] for name in ("precision", "recall", "f1")})
    writer = TensorBoardLogger(folder, filename_suffix=".eval")
    try:
        writer.image(f"eval/{split}/confusion_matrix", image, step)
        writer.log({f"eval/{split}/{name}": value for name, value in scalars.items()}, step)
    finally:
        writer.close()


def _tag(name: str) -> str:
    """A class name as a TensorBoard tag part ("0 - zero" -> "0_-_zero"); TensorBoard rejects spaces."""
    return re.sub(r"[^-\w.]+", "_", name)


def format_evaluation(result: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """The printed report of `evaluate`: what was scored, the classification table, the matrix, speed."""
    summary = summary or classification_summary(result["confusion_matrix"], result["classes"])
    head = (f"# {result['checkpoint']} (epoch {result['epoch']}, {result['weights']})\n"
            f"# {result['split']} split: {result['num_samples']} samples on {result['device']} "
            f"in {result['eval_seconds']:.2f} s")
    scalars = [f"loss {result['loss']:.4f} (no interval: per-sample losses are not kept)"]
    figures = {"accuracy": result["accuracy"]}
    if f"top{TOP_K}_accuracy" in result:
        figures[f"top{TOP_K}_accuracy"] = result[f"top{TOP_K}_accuracy"]
    for average in ("macro", "weighted"):
        figures.update({f"{name}_{average}": result["averages"][average][name]
                        for name in ("precision", "recall", "f1")})
    bounds = result.get("intervals", {})
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        if name in bounds:
            low, high = bounds[name]
            scalars.append(f"{name:<{width}} {value:.4f} [{low:.4f}, {high:.4f}]  {bounds['methods'][name]}")
    confidence = f"{100 * bounds['confidence']:g} % intervals over the test samples" if bounds else ""
    parts = [head, "", format_classification_report(summary), "", f"# {confidence}".rstrip(" #"), *scalars, "",
             "confusion matrix (rows: true class, columns: predicted class index)",
             format_confusion_matrix(result["confusion_matrix"], result["classes"])]
    if "speed" in result:
        parts += ["", "# inference speed", format_speed(result["speed"])]
    if "files" in result:
        files = result["files"]
        parts += ["", f"wrote {files['json']}", f"wrote {files['confusion_png']}",
                  f"TensorBoard: eval/{result['split']}/* at step {result['epoch']} in {files['tensorboard']}"]
    return "\n".join(parts)
