"""`python -m harness.cv RECIPE --folds K [key=value ...]`: stratified K-fold cross-validation.

The recipe's training split (MNIST: the 60k train images; the test split is never evaluated) is
cut into K stratified folds (`harness.data.folds`, seeded by `trainer.seed`). Fold i trains a fresh
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

import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.core.callbacks import best_entry
from harness.core.seed import seed_everything
from harness.data import ImageTensors, dataset_targets
from harness.data.folds import fold_splits, stratified_folds
from harness.errors import HarnessError
from harness.metrics.report import format_table, mean_std
from harness.recipe.build import build_model, epochs_to_run
from harness.recipe.data import is_loader, load_data_source
from harness.recipe.parts import build_training, setup
from harness.recipe.run_folder import check_run_parent, command_folder, write_config, write_json
from harness.recipe.schema import Recipe


def cross_validate(recipe: Recipe, folds: int, recipe_path: str | Path | None = None) -> dict[str, Any]:
    """Stratified `folds`-fold cross-validation of a validated `Recipe` on its training split.

    Returns (and writes to cv.json, unless `trainer.fast_dev_run`) plain data::

        {"recipe", "folds", "seed", "cv_dir", "score": "last epoch", "std_of": "sample (ddof=1)",
         "per_fold": [{"fold": 1, "train_size", "val_size", "epochs_run", "seconds", "run_dir",
                       "metrics": {"val/loss": ..., "val/acc": ...},
                       "best": {"monitor", "epoch", "value"}}, ...],
         "mean": {"val/loss": ..., ..., "seconds": ...}, "std": {...}}
    """
    t = recipe.trainer
    if folds < 2:  # before any data is read; stratified_folds checks the upper bound
        raise HarnessError(f"--folds must be at least 2 (K-fold cross-validation holds out 1/K each time), got {folds}")
    if t.overfit_batches:
        raise HarnessError("trainer.overfit_batches does not apply to cross-validation; leave it at 0")
    if not t.fast_dev_run:
        check_run_parent(recipe, recipe_path, "cv")  # the folder itself is made once the folds are known
    env = setup(recipe)
    build_model(recipe.model)  # a bad model name fails before the data is read
    # The training split exactly as build_data sees it (data.classes applied, any source), so the
    # fold indices index the same samples.
    full = load_data_source(recipe.data).train
    if is_loader(full):
        raise HarnessError(f"{recipe.data.name} gave a training loader: cross-validation needs a dataset")
    targets = full.targets if isinstance(full, ImageTensors) else dataset_targets(full)
    splits = fold_splits(stratified_folds(targets, folds, seed=t.seed))

    cv_dir = None if t.fast_dev_run else command_folder(recipe, recipe_path, "cv")
    if cv_dir is not None:
        write_config(cv_dir, recipe)
    print(f"cross-validation: {folds} stratified folds of the {len(full)} training samples "
          f"({recipe_path or 'recipe'}, seed {t.seed}), folder {cv_dir or '(none: fast_dev_run)'}", flush=True)

    per_fold: list[dict[str, Any]] = []
    bar = tqdm(total=folds, desc="folds", unit="fold", disable=not (t.progress and sys.stderr.isatty()))
    for fold, (train_idx, val_idx) in enumerate(splits, start=1):
        seed_everything(t.seed, t.deterministic)  # every fold's model starts from the same weights
        fold_dir = None if cv_dir is None else cv_dir / f"fold-{fold}"
        parts = build_training(recipe, env, fold_dir, checkpoints=False, indices=(train_idx, val_idx))
        trainer, data = parts.trainer, parts.data
        started = time.perf_counter()
        try:
            trainer.fit(data.train, data.val, epochs=epochs_to_run(recipe))
        finally:
            trainer.close()
        seconds = time.perf_counter() - started
        last = trainer.history[-1]
        best = best_entry(trainer.history, t.monitor, t.mode)
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
        write_json(cv_dir / "cv.json", summary)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
