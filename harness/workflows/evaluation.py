"""Score a checkpoint on a split: the work of `python -m harness.evaluate`, as a Python function.

Builds the model and data from the recipe (the same builders as `harness.train`), loads the
checkpoint's weights and runs ONE validation pass over the whole split. The pass counts one
confusion matrix, from which come accuracy, precision / recall / F1 per class and micro / macro /
weighted averaged (sklearn's `classification_report`, the same numbers), plus the loss and top-5
accuracy; and it keeps every sample's class probabilities and target on the device
(`harness.core.predictions.PredictionRecorder`, 8·C + 16 bytes a sample), from which come the
calibration (ECE and its bins), AUROC and average precision per class and averaged, the ROC and PR
curves, the most confused class pairs, the most confident mistakes and the predictions file.

Weights: the raw model weights, or the EMA average when the recipe has `trainer.ema` (the
checkpoint must then hold one). The recipe's `limit_val_batches`, `fast_dev_run` and
`overfit_batches` are training budgets and are ignored: the whole split is scored.

Files, in the run folder of the checkpoint (`<run>/checkpoints/best.pt` -> `<run>/`; a checkpoint
elsewhere: its own folder), named after the checkpoint and the split so that evaluating best and
last, or test and val, keeps every result (`harness.workflows.evaluation_files` writes them):

    eval-<checkpoint>-<split>.json              everything printed, as plain data (+ "speed" with --speed)
    eval-<checkpoint>-<split>-confusion.png     the confusion matrix, rows normalised to 100 %
    eval-<checkpoint>-<split>-reliability.png   the reliability diagram, its ECE written on it
    predictions-<checkpoint>-<split>.csv        one row per sample: index in the split, target,
                                                prediction, its probability, the top-5 classes
    events.out.tfevents.*.eval                  TensorBoard, at step = the checkpoint's epoch:
        scalars  eval/<split>/{loss,accuracy,top5_accuracy,ece,auroc,average_precision},
                 eval/<split>/{precision,recall,f1}_{micro,macro,weighted}
        images   eval/<split>/{confusion_matrix,reliability,roc_curves,confident_mistakes},
                 eval/<split>/per_class/{precision,recall,f1} (one bar chart over the classes each)
        PR curves eval/<split>/pr_curve/<class> (one class against the rest)

`evaluate(recipe, checkpoint)` returns that data. Module layout: this file runs the pass and gathers
the figures; `evaluation_analysis` derives what the per-sample predictions say; `evaluation_files`
writes; `evaluation_report` lays out the printed report; `evaluation_text` reports a language model.

A language model (`data.name: text_chars`) is scored per token instead: the loss, perplexity, bits per
character and token accuracy over every character of the split (text_chars has one held-out split, the
validation text: `--split test` and `--split val` score the same characters), in `eval-<checkpoint>-<split>.json`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.core.predictions import PredictionRecorder, Predictions
from harness.core.speed import measure_inference
from harness.data.text_chars import TEXT_CHARS
from harness.metrics import AUROC, AveragePrecision, CalibrationError
from harness.metrics.report import classification_summary, most_confused_pairs
from harness.recipe.parts import build_evaluation, setup
from harness.recipe.schema import MetricConfig, Recipe, load_recipe
from harness.stats import (
    batched_precision_recall_f1,
    bootstrap_ci,
    percentile_interval,
    resample_confmat,
    wilson_interval,
)
from harness.workflows.evaluation_analysis import calibration, ranking
from harness.workflows.evaluation_files import write_outputs
from harness.workflows.evaluation_report import format_evaluation
from harness.workflows.evaluation_text import token_metrics, token_report

TOP_K = 5  # top-k accuracy is reported when there are more than this many classes
CONFIDENCE = 0.95  # of every interval reported
RESAMPLES = 1000  # bootstrap resamples: the interval's ends move by about 0.1 % of its width between seeds
CONFUSED_PAIRS = 10  # the largest off-diagonal cells of the confusion matrix, reported
CALIBRATION_BINS = 15  # unless the recipe has a calibration_error metric: then its n_bins


def evaluate(recipe: Recipe | str | Path, checkpoint: str | Path, split: str = "test", *, speed: bool = False,
             write: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Score `checkpoint` on the recipe's `split` ("test" or "val"); returns plain data.

    `recipe` is a validated `Recipe` or the path of a YAML file. With `write` (default) the JSON,
    PNGs, CSV and TensorBoard events go into the checkpoint's run folder; `verbose` prints the
    report. `speed=True` adds `measure_inference` at batch sizes 1 and `data.eval_batch_size`.
    Bad input (missing or corrupt checkpoint, a checkpoint of another model) raises HarnessError.

    Returns {"checkpoint", "epoch", "weights", "split", "num_samples", "device", "loss", "accuracy",
    "top5_accuracy" (more than 5 classes), "ece", "auroc", "average_precision",
    "averages": {micro|macro|weighted: {precision, recall, f1}},
    "per_class": {class name: {precision, recall, f1, support, auroc, average_precision}}, "classes",
    "confusion_matrix" (counts, rows = true class), "confused_pairs", "calibration" (the bins),
    "intervals", "mistakes", "eval_seconds", "files" (with write), "speed" (with speed=True)}; under
    torchrun, ranks other than 0 return the keys up to "top5_accuracy" only (rank 0 analyses and reports).
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    checkpoint = Path(checkpoint)
    # Under torchrun each rank scores its shard (no padding) and the counts are summed: exact.
    env = setup(recipe)
    write, verbose, speed = write and env.dist.is_main, verbose and env.dist.is_main, speed and env.dist.is_main
    if recipe.data.name == TEXT_CHARS:  # a language model: per token, no per-sample analysis
        parts = build_evaluation(recipe, env, checkpoint, split, token_metrics)
        started = time.perf_counter()
        scores = parts.evaluator.validate(parts.loader, prefix=split)
        return token_report(parts, scores, checkpoint, split, str(env.device), time.perf_counter() - started,
                            write, verbose)
    parts = build_evaluation(recipe, env, checkpoint, split, report_metrics, trainer_class=PredictionRecorder)
    started = time.perf_counter()
    scores = parts.evaluator.validate(parts.loader, prefix=split)
    kept = parts.evaluator.predictions()  # the same pass, sample by sample (gathered from every rank)
    eval_seconds = time.perf_counter() - started

    confmat = scores[f"{split}/confusion_matrix"]
    classes = list(parts.data.classes)
    summary = classification_summary(confmat, classes)
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
    if not env.dist.is_main:  # under torchrun rank 0 alone analyses, reports and writes
        return result
    n_bins = reliability_bins(recipe)
    bins = calibration(kept, n_bins)
    scored = ranking(kept, classes)
    result.update(ece=bins["ece"], auroc=scored["auroc"], average_precision=scored["average_precision"])
    per_class = {name: {**values, **scored["per_class"][name]} for name, values in summary["per_class"].items()}
    result.update(averages=summary["averages"], per_class=per_class, classes=classes, confusion_matrix=confmat,
                  confused_pairs=most_confused_pairs(confmat, classes, CONFUSED_PAIRS), calibration=bins,
                  mistakes=mistakes_entry(kept), eval_seconds=round(eval_seconds, 3))
    result["intervals"] = intervals(result, confmat, kept, n_bins)
    if speed:
        inputs, _ = next(iter(parts.loader))
        # timed as the run computes: the recipe's precision and memory format
        result["speed"] = measure_inference(parts.model, inputs, batch_sizes=(1, recipe.data.eval_batch_size),
                                            device=env.device, precision=recipe.trainer.precision,
                                            channels_last=recipe.trainer.channels_last)
    if write:
        result["files"] = write_outputs(result, summary, checkpoint, kept)
    if verbose:
        print(format_evaluation(result, summary), flush=True)
    return result


def intervals(result: dict[str, Any], confmat: list[list[int]], kept: Predictions | None = None,
              n_bins: int = CALIBRATION_BINS, confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
              seed: int = 0) -> dict[str, Any]:
    """How sure each scalar figure is, over the sampling of the test set: accuracy and top-k accuracy
    (proportions) by the Wilson score interval; the averaged precision, recall and F1 by the
    percentile bootstrap of the samples, drawn from the confusion matrix; with the per-sample
    predictions `kept`, the ECE, AUROC and average precision by the percentile bootstrap of the
    samples too (`harness.stats.bootstrap_ci`, the same resamples for the three). The loss gets none:
    its per-sample values are not kept."""
    n = result["num_samples"]
    correct = sum(confmat[i][i] for i in range(len(confmat)))
    out: dict[str, Any] = {"confidence": confidence, "accuracy": [*wilson_interval(correct, n, confidence)]}
    methods = {"accuracy": "Wilson score"}
    if f"top{TOP_K}_accuracy" in result:
        hits = round(result[f"top{TOP_K}_accuracy"] * n)
        out[f"top{TOP_K}_accuracy"] = [*wilson_interval(hits, n, confidence)]
        methods[f"top{TOP_K}_accuracy"] = "Wilson score"
    bootstrap = f"percentile bootstrap, {n_resamples} resamples, seed {seed}"
    resamples = resample_confmat(confmat, n_resamples=n_resamples, seed=seed)
    for average in ("macro", "weighted"):
        values = batched_precision_recall_f1(resamples, average)
        for name, value in zip(("precision", "recall", "f1"), values, strict=True):
            out[f"{name}_{average}"] = [*percentile_interval(value, confidence)]
            methods[f"{name}_{average}"] = bootstrap
    if kept is not None:
        c = kept.probs.shape[1]
        for name, metric in (("ece", CalibrationError(c, n_bins=n_bins)), ("auroc", AUROC(c)),
                             ("average_precision", AveragePrecision(c))):
            out[name] = [*bootstrap_ci(metric.to(kept.probs.device), kept.probs, kept.target,
                                       n_resamples=n_resamples, confidence=confidence, seed=seed)]
            methods[name] = bootstrap
    out["methods"] = methods
    return out


def report_metrics(num_classes: int) -> dict[str, MetricConfig]:
    """The metrics a report needs instead of the recipe's training-log metrics: one confusion matrix
    gives every per-class and averaged figure; top-5 accuracy when there are more than 5 classes."""
    metrics = {"confusion_matrix": MetricConfig(type="confusion_matrix")}
    if num_classes > TOP_K:
        metrics[f"top{TOP_K}"] = MetricConfig(type="accuracy", top_k=TOP_K)
    return metrics


def reliability_bins(recipe: Recipe) -> int:
    """The reliability diagram's bins: those of the recipe's first `calibration_error` metric, so that
    its ECE is the one the run logged; else 15."""
    return next((m.n_bins for m in recipe.metrics.values() if m.type == "calibration_error"), CALIBRATION_BINS)


def mistakes_entry(kept: Predictions) -> dict[str, Any]:
    """What the report says about the confident mistakes: which samples are shown, or why none are."""
    if kept.mistakes is None:
        what = "token ids, sentences of their own lengths" if kept.token_ids else f"{_shape(kept.input_shape)} a sample"
        return {"shown": [], "skipped": f"the inputs are not images: {what}"}
    m = kept.mistakes
    return {"shown": [{"index": i, "target": t, "predicted": p, "probability": c} for i, t, p, c in zip(
        m.index.tolist(), m.target.tolist(), m.predicted.tolist(), m.confidence.tolist(), strict=True)]}


def _shape(shape: tuple[int, ...]) -> str:
    return f"{shape[0]} features" if len(shape) == 1 else "shape (" + ", ".join(map(str, shape)) + ")"
