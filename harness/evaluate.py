"""`python -m harness.evaluate RECIPE --checkpoint PATH [--split test|val] [--speed] [a.b=c ...]`: score a checkpoint.

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

`evaluate(recipe, checkpoint)` is the same thing from Python and returns that data.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.cli import run_command
from harness.config import MetricConfig, Recipe
from harness.errors import HarnessError

SPLITS = ("test", "val")
TOP_K = 5  # top-k accuracy is reported when there are more than this many classes

EXAMPLES = """examples:
  python -m harness.evaluate recipes/mnist.yaml --checkpoint runs/mnist/<time>/checkpoints/best.pt
  python -m harness.evaluate recipes/mnist.yaml --checkpoint runs/mnist/<time>/checkpoints/last.pt --split val
  python -m harness.evaluate recipes/mnist.yaml --checkpoint runs/mnist/<time>/checkpoints/best.pt --speed
  python -m harness.evaluate recipes/mnist.yaml --checkpoint CKPT trainer.device=cpu data.eval_batch_size=500"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.evaluate", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="the YAML recipe the checkpoint was trained with, e.g. recipes/mnist.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.device=cpu")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="e.g. runs/mnist/<time>/checkpoints/best.pt")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="test (default) or val: the recipe's held-out validation images")
    parser.add_argument("--speed", action="store_true",
                        help="also time inference at batch size 1 and data.eval_batch_size")
    # intermixed: overrides may come before or after the options
    return parser.parse_intermixed_args(argv)


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
    from harness.build import build_data, build_metrics, build_model, build_trainer
    from harness.checkpoint import check_model_state, read_checkpoint
    from harness.config import load_recipe
    from harness.device import resolve_device
    from harness.distributed import init_distributed
    from harness.report import classification_summary
    from harness.seed import seed_everything

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if split not in SPLITS:
        raise HarnessError(f"split {split!r}: allowed are {', '.join(SPLITS)}")
    checkpoint = Path(checkpoint)
    t = recipe.trainer
    # Under torchrun each rank scores its shard (no padding) and the counts are summed: exact.
    dist = init_distributed(t.device)
    write, verbose, speed = write and dist.is_main, verbose and dist.is_main, speed and dist.is_main
    device = resolve_device(t.device)  # a bad device fails before anything is read
    state = read_checkpoint(checkpoint)
    _check_same_data(state, recipe, split, checkpoint)
    seed_everything(t.seed, t.deterministic)
    model = build_model(recipe.model)
    weights, weights_note = choose_weights(state, recipe, checkpoint)
    check_model_state(model, weights, str(checkpoint))
    model.load_state_dict(weights)

    data = build_data(recipe.data, device, t.seed, channels_last=t.channels_last,
                      rank=dist.rank, world_size=dist.world_size)
    loader = data.test if split == "test" else data.val
    if loader is None:
        raise HarnessError("--split val: the recipe holds out no validation images (data.val_size is 0)")
    trainer = build_trainer(recipe, model, data, run_dir=None)
    # The whole split, and the metrics a report needs instead of the recipe's training-log metrics:
    # one confusion matrix gives every per-class and averaged figure.
    trainer.limit_val_batches = None
    trainer.metrics = {name: m.to(trainer.device)
                       for name, m in build_metrics(_report_metrics(data.num_classes), data.num_classes).items()}
    started = time.perf_counter()
    try:
        scores = trainer.validate(loader, prefix=split)
    finally:
        trainer.close()
    eval_seconds = time.perf_counter() - started

    confmat = scores[f"{split}/confusion_matrix"]
    summary = classification_summary(confmat, data.classes)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "epoch": state["epoch"],
        "weights": weights_note,
        "split": split,
        "num_samples": summary["support"],
        "device": str(trainer.device),
        "loss": scores[f"{split}/loss"],
        "accuracy": summary["accuracy"],
    }
    if f"{split}/top{TOP_K}" in scores:
        result[f"top{TOP_K}_accuracy"] = scores[f"{split}/top{TOP_K}"]
    result.update(averages=summary["averages"], per_class=summary["per_class"], classes=list(data.classes),
                  confusion_matrix=confmat, eval_seconds=round(eval_seconds, 3))
    if speed:
        from harness.speed import measure_inference

        inputs, _ = next(iter(loader))
        result["speed"] = measure_inference(model, inputs, batch_sizes=(1, recipe.data.eval_batch_size),
                                            device=trainer.device)
    if write:
        result["files"] = _write_outputs(result, summary, checkpoint)
    if verbose:
        print(format_evaluation(result, summary), flush=True)
    return result


def _report_metrics(num_classes: int) -> dict[str, MetricConfig]:
    metrics = {"confusion_matrix": MetricConfig(type="confusion_matrix")}
    if num_classes > TOP_K:
        metrics[f"top{TOP_K}"] = MetricConfig(type="accuracy", top_k=TOP_K)
    return metrics


def _check_same_data(state: dict[str, Any], recipe: Recipe, split: str, path: Path) -> None:
    """Refuse a dataset other than the checkpoint's, and a val split that would hold its training images."""
    saved = state.get("extra", {}).get("recipe")
    if saved is None:  # saved from Python without a recipe: nothing to compare
        return
    if saved["data"]["name"] != recipe.data.name:
        raise HarnessError(f"{path}: trained on data.name={saved['data']['name']!r}, "
                           f"but the recipe says data.name={recipe.data.name!r}")
    was = (saved["data"]["val_size"], saved["trainer"]["seed"])
    now = (recipe.data.val_size, recipe.trainer.seed)
    if split == "val" and was != now:
        raise HarnessError(
            f"--split val: {path} was trained holding out data.val_size={was[0]} with trainer.seed={was[1]}, "
            f"the recipe holds out data.val_size={now[0]} with trainer.seed={now[1]}: that val split would hold "
            f"training images; add data.val_size={was[0]} trainer.seed={was[1]}"
        )


def choose_weights(state: dict[str, Any], recipe: Recipe, path: Path) -> tuple[dict[str, Any], str]:
    """The raw model weights, or the EMA shadow when the recipe has trainer.ema; and words saying which."""
    ema = next((s for key, s in state.get("callbacks", {}).items() if key.endswith(":EMA")), None)
    shadow = ema.get("shadow") if ema else None
    if recipe.trainer.ema is None:
        hint = f"; the checkpoint also holds EMA weights: add trainer.ema.decay={ema['decay']} to score those" \
            if shadow is not None else ""
        return state["model"], f"raw model weights{hint}"
    if shadow is None:
        raise HarnessError(f"{path}: the recipe has trainer.ema but the checkpoint holds no EMA weights; "
                           "add trainer.ema=null to score the raw weights")
    return shadow, f"EMA weights (decay {ema['decay']})"


def output_dir(checkpoint: str | Path) -> Path:
    """Where the results of a checkpoint go: `<run>/` for `<run>/checkpoints/x.pt`, else its folder."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def _write_outputs(result: dict[str, Any], summary: dict[str, Any], checkpoint: Path) -> dict[str, str]:
    from harness.checkpoint import atomic_save
    from harness.report import confusion_matrix_figure, figure_to_array, save_figure

    folder = output_dir(checkpoint)
    split, epoch = result["split"], result["epoch"]
    stem = f"eval-{checkpoint.stem}-{split}"
    files = {"json": str(folder / f"{stem}.json"), "confusion_png": str(folder / f"{stem}-confusion.png"),
             "tensorboard": str(folder)}
    title = f"{checkpoint.name} (epoch {epoch}), {split}: accuracy {100 * result['accuracy']:.2f} %"
    figure = confusion_matrix_figure(result["confusion_matrix"], result["classes"], title=title)
    save_figure(figure, files["confusion_png"])
    _log_tensorboard(folder, result, summary, figure_to_array(figure))
    atomic_save(json.dumps({**result, "files": files}, indent=2).encode(), files["json"], raw=True)
    return files


def _log_tensorboard(folder: Path, result: dict[str, Any], summary: dict[str, Any], image: Any) -> None:
    from torch.utils.tensorboard import SummaryWriter  # lazy: heavy import

    split, step = result["split"], result["epoch"]
    scalars = {"loss": result["loss"], "accuracy": result["accuracy"]}
    if f"top{TOP_K}_accuracy" in result:
        scalars[f"top{TOP_K}_accuracy"] = result[f"top{TOP_K}_accuracy"]
    for average, values in summary["averages"].items():
        scalars.update({f"{name}_{average}": value for name, value in values.items()})
    for cls, values in summary["per_class"].items():
        scalars.update({f"{name}/{_tag(cls)}": values[name] for name in ("precision", "recall", "f1")})
    writer = SummaryWriter(log_dir=str(folder), filename_suffix=".eval")
    try:
        writer.add_image(f"eval/{split}/confusion_matrix", image, global_step=step, dataformats="HWC")
        for name, value in scalars.items():
            writer.add_scalar(f"eval/{split}/{name}", value, global_step=step)
    finally:
        writer.close()


def _tag(name: str) -> str:
    """A class name as a TensorBoard tag part ("0 - zero" -> "0_-_zero"); TensorBoard rejects spaces."""
    return re.sub(r"[^-\w.]+", "_", name)


def format_evaluation(result: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """The printed report of `evaluate`: what was scored, the classification table, the matrix, speed."""
    from harness.report import classification_summary, format_classification_report, format_confusion_matrix

    summary = summary or classification_summary(result["confusion_matrix"], result["classes"])
    head = (f"# {result['checkpoint']} (epoch {result['epoch']}, {result['weights']})\n"
            f"# {result['split']} split: {result['num_samples']} samples on {result['device']} "
            f"in {result['eval_seconds']:.2f} s")
    scalars = f"loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}"
    if f"top{TOP_K}_accuracy" in result:
        scalars += f"  top-{TOP_K} accuracy {result[f'top{TOP_K}_accuracy']:.4f}"
    parts = [head, "", format_classification_report(summary), "", scalars, "",
             "confusion matrix (rows: true class, columns: predicted class index)",
             format_confusion_matrix(result["confusion_matrix"], result["classes"])]
    if "speed" in result:
        from harness.speed import format_speed

        parts += ["", "# inference speed", format_speed(result["speed"])]
    if "files" in result:
        files = result["files"]
        parts += ["", f"wrote {files['json']}", f"wrote {files['confusion_png']}",
                  f"TensorBoard: eval/{result['split']}/* at step {result['epoch']} in {files['tensorboard']}"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        from harness.config import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        evaluate(recipe, args.checkpoint, args.split, speed=args.speed)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
