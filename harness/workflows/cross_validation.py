"""`python -m harness.cv RECIPE --folds K [key=value ...]`: stratified K-fold cross-validation.

The recipe's training split (MNIST: the 60k train images; sklearn:*: the 80 % outside their fixed test
split; the test split is never evaluated) is cut into K stratified folds (`harness.data.folds`, seeded
by `trainer.seed`). Fold i trains a fresh model from the recipe on the other K-1 folds and
validates on fold i; `data.val_size` does not apply (the held-out fold is the validation set).
Sentences (`text_lines`) are encoded with a vocabulary built inside each fold from its training part
alone (`harness.recipe.data.build_data`): words only the held-out fold holds are <unk> there.
Every fold starts from the same seed, so the spread between folds comes from the data alone. A
fold's score is its last epoch's validation metrics: picking the best epoch on the held-out fold
would bias the estimate upwards.

    runs/<name>-cv/<time>/
        config.yaml     the resolved recipe
        cv.json         per-fold metrics, their mean, sample standard deviation (ddof=1) and the
                        95 % t-interval of the mean over folds
        fold-1/ ...     each fold's history.jsonl and TensorBoard events, side by side so
                        `tensorboard --logdir runs/<name>-cv/<time>` overlays the folds' curves

The t-interval (mean ± t(0.975, K-1) · std / sqrt(K), `harness.stats.t_interval`) treats the K fold
scores as independent measurements. They are not: any two folds' models share (K-2)/(K-1) of their
training data, so the scores move together and the interval is optimistic (too narrow); the printed
table says so. It describes the recipe trained on this much data, not a given model's test error.

No checkpoints are written: fold models are measurements of the recipe, not models to keep (train
the final model on all the data with `python -m harness.train`). `cross_validate(recipe, folds)`
is the same thing from Python and returns what cv.json holds.

On SIGINT / SIGTERM the fold in progress stops after its current step; cv.json is written with the
folds finished so far (`"complete": false`, no mean or std) and the command that finishes the run is
printed: `--resume <cv folder>` with the folder's own config.yaml runs the remaining folds into the
same folder (the interrupted fold again from its start; its partial logs are replaced).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.core.callbacks import best_entry
from harness.core.seed import seed_everything
from harness.core.trainer import TrainingInterrupted
from harness.data import TENSOR_SPLITS, TextLines, dataset_targets
from harness.data.folds import fold_splits, stratified_folds
from harness.errors import HarnessError
from harness.metrics.report import format_table, mean_std
from harness.recipe.build import build_model, check_monitors, epochs_to_run, model_class
from harness.recipe.data import TOKEN_SOURCES, is_loader, load_data_source
from harness.recipe.parts import build_training, setup
from harness.recipe.run_folder import CONFIG, check_run_parent, command_folder, write_config, write_json
from harness.recipe.schema import Recipe, dump_yaml
from harness.stats import t_interval

CV_JSON = "cv.json"
CONFIDENCE = 0.95  # of the t-interval over folds
NOT_INDEPENDENT = ("the folds are not independent (their models share most of their training data): the "
                   "t-interval treats them as if they were, so it is optimistic (too narrow)")


def cross_validate(recipe: Recipe, folds: int, recipe_path: str | Path | None = None,
                   resume: str | Path | None = None) -> dict[str, Any]:
    """Stratified `folds`-fold cross-validation of a validated `Recipe` on its training split.

    `resume`: the cv folder of an interrupted run; its finished folds are kept and the others run
    (the recipe and `folds` must be the ones that run used: give its config.yaml).

    Returns (and writes to cv.json, unless `trainer.fast_dev_run`) plain data::

        {"recipe", "folds", "seed", "cv_dir", "complete": true, "score": "last epoch", "std_of": "sample (ddof=1)",
         "interval_of": "95 % t-interval of the mean over folds (optimistic: ...)",
         "per_fold": [{"fold": 1, "train_size" (the samples the fold trained on), "other_folds_size" (what
                       they were drawn from: more with data.train_size), "val_size", "epochs_run", "seconds",
                       "run_dir", "metrics": {"val/loss": ..., "val/acc": ...},
                       "best": {"monitor", "epoch", "value"}}, ...],
         "mean": {"val/loss": ..., ..., "seconds": ...}, "std": {...}, "t_interval": {"val/loss": [low, high], ...}}
    """
    t = recipe.trainer
    if folds < 2:  # before any data is read; stratified_folds checks the upper bound
        raise HarnessError(f"--folds must be at least 2 (K-fold cross-validation holds out 1/K each time), got {folds}")
    if t.overfit_batches:
        raise HarnessError("trainer.overfit_batches does not apply to cross-validation; leave it at 0")
    check_monitors(recipe, validates=True)  # the held-out fold is the validation data; data.val_size is not used
    done: list[dict[str, Any]] = []
    if resume is not None:
        if t.fast_dev_run:
            raise HarnessError("--resume: trainer.fast_dev_run writes no cv folder, there is nothing to resume")
        done = _finished_folds(Path(resume), recipe, folds)
    elif not t.fast_dev_run:
        check_run_parent(recipe, recipe_path, "cv")  # the folder itself is made once the folds are known
    env = setup(recipe)
    if recipe.data.name in TOKEN_SOURCES:  # the vocabulary of each fold sizes the model: its name only, for now
        model_class(recipe.model)
    else:
        build_model(recipe.model)  # a bad model name or model.args fails before the data is read
    # The training split exactly as build_data sees it (data.classes applied, any source), so the
    # fold indices index the same samples.
    full = load_data_source(recipe.data).train
    if is_loader(full):
        raise HarnessError(f"{recipe.data.name} gave a training loader: cross-validation needs a dataset")
    targets = full.targets if isinstance(full, (*TENSOR_SPLITS, TextLines)) else dataset_targets(full)
    splits = fold_splits(stratified_folds(targets, folds, seed=t.seed))
    smallest = min(len(train_idx) for train_idx, _ in splits)
    if recipe.data.train_size is not None and recipe.data.train_size > smallest:
        raise HarnessError(f"data.train_size={recipe.data.train_size}: with --folds {folds}, a fold trains on the "
                           f"other {folds - 1} folds, as few as {smallest} of the {len(full)} training samples; "
                           f"set data.train_size to at most {smallest}, or null to train on all of them")

    if resume is not None:
        cv_dir: Path | None = Path(resume)
    else:
        cv_dir = None if t.fast_dev_run else command_folder(recipe, recipe_path, "cv")
        if cv_dir is not None:
            write_config(cv_dir, recipe)
    print(f"cross-validation: {folds} stratified folds of the {len(full)} training samples "
          f"({recipe_path or 'recipe'}, seed {t.seed}), folder {cv_dir or '(none: fast_dev_run)'}"
          + (f"; folds {', '.join(str(f['fold']) for f in done)} already done" if done else ""), flush=True)

    per_fold: list[dict[str, Any]] = list(done)
    bar = tqdm(total=folds, initial=len(done), desc="folds", unit="fold",
               disable=not (t.progress and sys.stderr.isatty()))
    for fold, (train_idx, val_idx) in enumerate(splits, start=1):
        if fold <= len(done):
            continue
        seed_everything(t.seed, t.deterministic)  # every fold's model starts from the same weights
        fold_dir = None if cv_dir is None else cv_dir / f"fold-{fold}"
        if fold_dir is not None and fold_dir.exists():  # an interrupted fold's partial logs: this run replaces them
            shutil.rmtree(fold_dir)
        parts = build_training(recipe, env, fold_dir, checkpoints=False, indices=(train_idx, val_idx))
        trainer, data = parts.trainer, parts.data
        started = time.perf_counter()
        try:
            trainer.fit(data.train, data.val, epochs=epochs_to_run(recipe))
        except TrainingInterrupted as e:
            bar.close()
            _write_interrupted(cv_dir, recipe, recipe_path, folds, per_fold, fold, e.signum)
            raise
        finally:
            trainer.close()
        seconds = time.perf_counter() - started
        last = trainer.history[-1]
        best = best_entry(trainer.history, t.monitor, t.mode)
        result = {
            "fold": fold,
            # what the fold trained on: a seeded data.train_size of the other folds, or all of them
            "train_size": recipe.data.train_size if recipe.data.train_size is not None else len(train_idx),
            "other_folds_size": len(train_idx),
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
        "complete": True,
        "score": "last epoch",
        "std_of": "sample (ddof=1)",
        "per_fold": per_fold,
        "mean": {name: mean_std(values)[0] for name, values in columns.items()},
        "std": {name: mean_std(values)[1] for name, values in columns.items()},
        "interval_of": f"{100 * CONFIDENCE:g} % t-interval of the mean over folds; {NOT_INDEPENDENT}",
        "t_interval": {name: [*t_interval(values, CONFIDENCE)] for name, values in columns.items()
                       if name != "seconds"},
    }
    print(format_cv(summary), flush=True)
    if cv_dir is not None:
        write_json(cv_dir / CV_JSON, summary)
        print(f"cv folder: {cv_dir}  (tensorboard --logdir {cv_dir})", flush=True)
    return summary


def _write_interrupted(cv_dir: Path | None, recipe: Recipe, recipe_path: str | Path | None, folds: int,
                       per_fold: list[dict[str, Any]], fold: int, signum: int) -> None:
    """cv.json with the folds finished so far, marked incomplete, and the command that finishes the run."""
    name = signal.Signals(signum).name
    if cv_dir is None:  # fast_dev_run: nothing written, nothing to finish
        print(f"cross-validation interrupted by {name} in fold {fold} of {folds}", file=sys.stderr, flush=True)
        return
    write_json(cv_dir / CV_JSON, {
        "recipe": str(recipe_path) if recipe_path is not None else None,
        "folds": folds,
        "seed": recipe.trainer.seed,
        "cv_dir": str(cv_dir),
        "complete": False,
        "interrupted": {"signal": name, "fold": fold},
        "score": "last epoch",
        "per_fold": per_fold,  # no mean or std: they would describe only the folds that happened to finish
    })
    print(f"cross-validation interrupted by {name} in fold {fold} of {folds}: {cv_dir / CV_JSON} holds the "
          f"{len(per_fold)} finished fold{'s' * (len(per_fold) != 1)} (complete: false); to run the others, "
          f"python -m harness.cv {cv_dir / CONFIG} --folds {folds} --resume {cv_dir}", file=sys.stderr, flush=True)


def _finished_folds(cv_dir: Path, recipe: Recipe, folds: int) -> list[dict[str, Any]]:
    """The finished folds an interrupted run recorded in `cv_dir`; refuses a complete run, another
    recipe or another number of folds (their folds would not be the same samples)."""
    report_path, config_path = cv_dir / CV_JSON, cv_dir / CONFIG
    if not report_path.is_file() or not config_path.is_file():
        raise HarnessError(f"--resume {cv_dir}: not a cv folder (needs {CV_JSON} and {CONFIG})")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(f"--resume {cv_dir}: {CV_JSON} cannot be read ({e})") from None
    if report.get("complete", True):
        raise HarnessError(f"--resume {cv_dir}: that cross-validation is complete; nothing to run")
    if report.get("folds") != folds:
        raise HarnessError(f"--resume {cv_dir}: it ran --folds {report.get('folds')}, not {folds}; "
                           f"add --folds {report.get('folds')}")
    if config_path.read_text() != dump_yaml(recipe):
        raise HarnessError(f"--resume {cv_dir}: the recipe differs from the one it ran with; give its "
                           f"{config_path} as the recipe, with no overrides")
    done = report.get("per_fold", [])
    if [f.get("fold") for f in done] != list(range(1, len(done) + 1)):
        raise HarnessError(f"--resume {cv_dir}: {CV_JSON} lists folds {[f.get('fold') for f in done]}, "
                           "expected 1, 2, ... in order")
    return done


def format_cv(summary: dict[str, Any]) -> str:
    """One row per metric, one column per fold, then mean ± sample std (ddof=1) and the t-interval of
    the mean, with a note that the folds are not independent."""
    per_fold = summary["per_fold"]
    header = ["metric", *(f"fold {f['fold']}" for f in per_fold), "mean ± std (sample, ddof=1)",
              f"{100 * CONFIDENCE:g} % t-interval"]
    rows = []
    for name, mean in summary["mean"].items():
        values = [f["metrics"][name] if name != "seconds" else f["seconds"] for f in per_fold]
        digits = 1 if name == "seconds" else 4
        interval = summary["t_interval"].get(name)
        rows.append([name, *(f"{v:.{digits}f}" for v in values),
                     f"{mean:.{digits}f} ± {summary['std'][name]:.{digits}f}",
                     f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "-"])
    return (format_table(header, rows) + f"\n# t-interval: mean ± t({0.5 + CONFIDENCE / 2:g}, K-1) · std / sqrt(K) "
            f"over the K={len(per_fold)} folds; {NOT_INDEPENDENT}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
