"""`python -m harness.cv RECIPE --folds K [key=value ...]`: stratified K-fold cross-validation.

The recipe's training split (MNIST: the 60k train images; the test split is never evaluated) is
cut into K stratified folds (`harness.folds`, seeded by `trainer.seed`). Fold i trains a fresh
model from the recipe on the other K-1 folds and validates on fold i; `data.val_size` does not
apply (the held-out fold is the validation set). Every fold starts from the same seed, so the
spread between folds comes from the data alone. A fold's score is its last epoch's validation
metrics: picking the best epoch on the held-out fold would bias the estimate upwards.

    runs/<name>-cv/<time>/
        config.yaml     the resolved recipe
        cv.json         per-fold metrics, their mean and sample standard deviation (ddof=1)
        fold-1/ ...     each fold's history.jsonl and TensorBoard events, side by side so
                        `tensorboard --logdir runs/<name>-cv/<time>` overlays the folds' curves

No checkpoints are written: fold models are measurements of the recipe, not models to keep (train
the final model on all the data with `python -m harness.train`). `cross_validate(recipe, folds)`
is the same thing from Python and returns what cv.json holds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.cli import run_command

EXAMPLES = """examples:
  python -m harness.cv recipes/mnist_mlp.yaml --folds 5
  python -m harness.cv recipes/mnist.yaml --folds 3 trainer.epochs=2
  tensorboard --logdir runs/mnist_mlp-cv"""


def cross_validate(recipe: Any, folds: int, recipe_path: str | Path | None = None) -> dict[str, Any]:
    """Stratified `folds`-fold cross-validation of a validated `Recipe` on its training split.

    Returns (and writes to cv.json, unless `trainer.fast_dev_run`) plain data::

        {"recipe", "folds", "seed", "cv_dir", "score": "last epoch", "std_of": "sample (ddof=1)",
         "per_fold": [{"fold": 1, "train_size", "val_size", "epochs_run", "seconds", "run_dir",
                       "metrics": {"val/loss": ..., "val/acc": ...},
                       "best": {"monitor", "epoch", "value"}}, ...],
         "mean": {"val/loss": ..., ..., "seconds": ...}, "std": {...}}
    """
    from tqdm import tqdm

    from harness.build import build_data, build_model, build_trainer, check_monitors, is_loader, load_data_source
    from harness.config import dump_yaml
    from harness.data import ImageTensors, dataset_targets
    from harness.device import resolve_device
    from harness.errors import HarnessError
    from harness.folds import fold_splits, stratified_folds
    from harness.run import new_run_folder, run_name
    from harness.seed import seed_everything

    t = recipe.trainer
    if folds < 2:  # before any data is read; stratified_folds checks the upper bound
        raise HarnessError(f"--folds must be at least 2 (K-fold cross-validation holds out 1/K each time), got {folds}")
    if t.overfit_batches:
        raise HarnessError("trainer.overfit_batches does not apply to cross-validation; leave it at 0")
    device = resolve_device(t.device)
    check_monitors(recipe)
    build_model(recipe.model)  # a bad model name fails before the data is read
    # The training split exactly as build_data sees it (data.classes applied, any source), so the
    # fold indices index the same samples.
    full = load_data_source(recipe.data).train
    if is_loader(full):
        raise HarnessError(f"{recipe.data.name} gave a training loader: cross-validation needs a dataset")
    targets = full.targets if isinstance(full, ImageTensors) else dataset_targets(full)
    splits = fold_splits(stratified_folds(targets, folds, seed=t.seed))

    parent = Path(recipe.logging.root) / f"{run_name(recipe, recipe_path)}-cv"
    cv_dir = None if t.fast_dev_run else new_run_folder(parent)
    if cv_dir is not None:
        (cv_dir / "config.yaml").write_text(dump_yaml(recipe))
    print(f"cross-validation: {folds} stratified folds of the {len(full)} training samples "
          f"({recipe_path or 'recipe'}, seed {t.seed}), folder {cv_dir or '(none: fast_dev_run)'}", flush=True)

    per_fold: list[dict[str, Any]] = []
    bar = tqdm(total=folds, desc="folds", unit="fold", disable=not (t.progress and sys.stderr.isatty()))
    for fold, (train_idx, val_idx) in enumerate(splits, start=1):
        seed_everything(t.seed, t.deterministic)  # every fold's model starts from the same weights
        model = build_model(recipe.model)
        data = build_data(recipe.data, device, t.seed, channels_last=t.channels_last, indices=(train_idx, val_idx))
        fold_dir = None if cv_dir is None else cv_dir / f"fold-{fold}"
        trainer = build_trainer(recipe, model, data, fold_dir, checkpoints=False)
        started = time.perf_counter()
        try:
            trainer.fit(data.train, data.val, epochs=1 if t.fast_dev_run else t.epochs)
        finally:
            trainer.close()
        seconds = time.perf_counter() - started
        last = trainer.history[-1]
        scored = [h for h in trainer.history if t.monitor in h]
        best = (max if t.mode == "max" else min)(scored, key=lambda h: h[t.monitor])
        result = {
            "fold": fold,
            "train_size": len(train_idx),
            "val_size": len(val_idx),
            "epochs_run": trainer.epoch,
            "seconds": round(seconds, 3),
            "run_dir": str(fold_dir) if fold_dir is not None else None,
            "metrics": {k: v for k, v in last.items() if k.startswith("val/") and _is_number(v)},
            "best": {"monitor": t.monitor, "epoch": best["epoch"], "value": best[t.monitor]},
        }
        per_fold.append(result)
        bar.write(f"fold {fold}/{folds}: {_format(result['metrics'])}  ({seconds:.1f} s)", file=sys.stdout)
        bar.update()
    bar.close()

    columns = {name: [f["metrics"][name] for f in per_fold] for name in per_fold[0]["metrics"]}
    columns["seconds"] = [f["seconds"] for f in per_fold]
    summary = {
        "recipe": str(recipe_path) if recipe_path is not None else None,
        "folds": folds,
        "seed": t.seed,
        "cv_dir": str(cv_dir) if cv_dir is not None else None,
        "score": "last epoch",
        "std_of": "sample (ddof=1)",
        "per_fold": per_fold,
        "mean": {name: mean_std(values)[0] for name, values in columns.items()},
        "std": {name: mean_std(values)[1] for name, values in columns.items()},
    }
    print(format_cv(summary), flush=True)
    if cv_dir is not None:
        (cv_dir / "cv.json").write_text(json.dumps(summary, indent=2))
        print(f"cv folder: {cv_dir}  (tensorboard --logdir {cv_dir})", flush=True)
    return summary


def format_cv(summary: dict[str, Any]) -> str:
    """One row per metric, one column per fold, then mean ± sample std (ddof=1)."""
    per_fold = summary["per_fold"]
    header = ["metric", *(f"fold {f['fold']}" for f in per_fold), "mean ± std (sample, ddof=1)"]
    rows = []
    for name, mean in summary["mean"].items():
        values = [f["metrics"][name] if name != "seconds" else f["seconds"] for f in per_fold]
        digits = 1 if name == "seconds" else 4
        rows.append([name, *(f"{v:.{digits}f}" for v in values),
                     f"{mean:.{digits}f} ± {summary['std'][name]:.{digits}f}"])
    return format_table(header, rows)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Left-aligned text columns (or a GitHub markdown table); cells are shown with str()."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.cv", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/mnist_mlp.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=2")
    parser.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds, >= 2 (default 5)")
    return parser.parse_intermixed_args(argv)  # options may come before or after the overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        from harness.config import load_recipe

        cross_validate(load_recipe(args.recipe, args.overrides), args.folds, recipe_path=args.recipe)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
