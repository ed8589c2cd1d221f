"""Hyperparameter search: the work of `python -m harness.sweep`, as a Python function.

Every trial is a normal training run (`harness.workflows.training.Run`) of the recipe with the trial's values
applied as overrides, through the same validation as the command line; every trial's recipe is
validated before the first trial starts (for `--optuna`, both ends of every range and every choice).
Trials are ranked by the recipe's `trainer.monitor` / `mode`, the best validation value of the run.
No trial is tested while the search runs: when it has finished, only the chosen trial (rank 1, the
best finished one) is scored on the test split, once, from its best.pt (`harness.workflows.evaluation.evaluate`,
which writes eval-best-test.json into that trial's folder). The test split thus plays no part in
choosing, and the table shows test figures for the chosen trial only.

- `--grid optim.lr=1e-3,3e-3 --grid optim.name=sgd,adam`: the cartesian product (4 trials).
- `--random N --range optim.lr=1e-4:1e-1:log --range optim.weight_decay=0:1e-3`: N draws, seeded
  (`--seed`, default `trainer.seed`); `:log` draws log-uniformly, otherwise uniformly; integers when
  both ends are integers. `--grid` keys are drawn uniformly from their values.
- `--optuna N`: Optuna's TPE sampler over the same `--range` / `--grid` space, seeded, with a
  median pruner fed each epoch's monitored value (`pip install -e '.[sweep]'`).

    runs/<name>-sweep/<time>/
        sweep.csv       one row per trial, best first: swept values, monitored value, seconds, run
                        folder, and the chosen trial's test figures (rewritten atomically after every trial)
        trial-001/ ...  each trial's run folder (config.yaml, summary.json, checkpoints, TensorBoard),
                        whose HParams row holds the swept values and, as its metrics, the trial's
                        val/ scalars under their own tags (the last epoch's values; sweep.csv ranks by
                        the best epoch's): `tensorboard --logdir runs/<name>-sweep/<time>`, HPARAMS tab

A trial whose loss turns non-finite is recorded as `diverged` and the sweep goes on. An Optuna
trial the pruner stops before its last epoch is `pruned`; one that trained to its last epoch is `done`
and Optuna gets its value. On SIGINT / SIGTERM the finished trials stay ranked in sweep.csv (no test:
the search did not finish) and the command says which trials did not run.
`sweep(recipe_path, ...)` is the same thing from Python and returns the ranked trials.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random as random_module
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.core.callbacks import Callback
from harness.core.checkpoint import atomic_save
from harness.core.trainer import NonFiniteLossError, TrainingInterrupted
from harness.data.text_chars import TEXT_CHARS
from harness.errors import HarnessError, Interrupted
from harness.metrics.report import format_table
from harness.recipe.build import check_monitors, validations_to_run
from harness.recipe.run_folder import best_checkpoint, command_folder, last_checkpoint
from harness.recipe.schema import load_recipe, parse_yaml
from harness.workflows.evaluation import evaluate
from harness.workflows.training import Run

INSTALL_OPTUNA = "--optuna needs Optuna, which is not installed: pip install -e '.[sweep]'"


@dataclass(frozen=True)
class Range:
    """A search range: uniform, or log-uniform (`log=True`); integers when both ends are ints."""

    low: float | int
    high: float | int
    log: bool = False
    spec: str = field(default="", compare=False)  # as given, `optim.lr=1e-4:1e-1:log`: errors name it

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def draw(self, rng: random_module.Random) -> float | int:
        if self.log:
            top = self.high + 1 if self.integer else self.high  # ints: [low, high + 1) before the floor
            value = math.exp(rng.uniform(math.log(self.low), math.log(top)))
            return min(int(value), int(self.high)) if self.integer else value
        return rng.randint(int(self.low), int(self.high)) if self.integer else rng.uniform(self.low, self.high)


def parse_grid(item: str) -> tuple[str, list[Any]]:
    """`optim.lr=1e-3,3e-3` -> ("optim.lr", [0.001, 0.003]); values are read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise HarnessError(f"--grid {item!r}: expected key=value1,value2,..., e.g. --grid optim.lr=1e-3,3e-3")
    values = parse_yaml(f"[{text}]", f"--grid {item!r}")
    if not values:
        raise HarnessError(f"--grid {item!r}: no values; give a comma-separated list, e.g. --grid {key}=1e-3,3e-3")
    return key, values


def parse_range(item: str) -> tuple[str, Range]:
    """`optim.lr=1e-4:1e-1:log` -> ("optim.lr", Range(0.0001, 0.1, log=True))."""
    key, sep, text = item.partition("=")
    parts = text.split(":")
    usage = f"--range {item!r}: expected key=low:high or key=low:high:log, e.g. --range optim.lr=1e-4:1e-1:log"
    if not sep or not key or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise HarnessError(usage)
    low, high = (parse_yaml(p, f"--range {item!r}") for p in parts[:2])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise HarnessError(usage)
    log = len(parts) == 3
    if not low < high:
        raise HarnessError(f"--range {item!r}: low must be smaller than high")
    if log and low <= 0:
        raise HarnessError(f"--range {item!r}: a log range needs low > 0")
    return key, Range(low, high, log, spec=item)


def grid_trials(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product, the first key varying slowest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def random_trials(n: int, ranges: dict[str, Range], choices: dict[str, list[Any]], seed: int) -> list[dict[str, Any]]:
    """`n` seeded draws: each range drawn by `Range.draw`, each choice uniformly."""
    rng = random_module.Random(seed)
    return [{**{key: r.draw(rng) for key, r in ranges.items()}, **{key: rng.choice(v) for key, v in choices.items()}}
            for _ in range(n)]


def trial_overrides(values: dict[str, Any]) -> list[str]:
    """{"optim.lr": 0.001} -> ["optim.lr=0.001"]: JSON is YAML, so the value reads back unchanged."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


class OptunaPruning(Callback):
    """Reports the monitored value to an Optuna trial after every epoch and stops the run when the
    pruner says so before `last_epoch` (the sweep then marks it pruned). At the last epoch the run has
    trained to the end: it is not pruned, and Optuna gets its value."""

    def __init__(self, trial: Any, monitor: str, last_epoch: int | None = None) -> None:
        self.trial = trial
        self.monitor = monitor
        self.last_epoch = last_epoch  # the run's last epoch (trainer.epochs); None: unknown, ask every epoch
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
        self.trial.report(float(logs[self.monitor]), step=epoch)
        if self.last_epoch is not None and epoch >= self.last_epoch:
            return
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True


def sweep(recipe_path: str | Path, overrides: Sequence[str] = (), *, grid: dict[str, list[Any]] | None = None,
          ranges: dict[str, Range] | None = None, random: int | None = None, optuna: int | None = None,
          seed: int | None = None) -> dict[str, Any]:
    """Run the trials of a grid (default), `random` draws or `optuna` TPE trials; rank them.

    Returns plain data (the rows are also in sweep.csv, best first)::

        {"sweep_dir", "monitor", "mode", "method", "seed", "keys": ["optim.lr", ...],
         "trials": [{"rank", "trial", "status": "done" | "pruned" | "diverged", "values": {...},
                     "value": best monitored value, "best_epoch", "test": {...}, "seconds", "run_dir"}]}
    """
    grid, ranges = dict(grid or {}), dict(ranges or {})
    method = "optuna" if optuna is not None else "random" if random is not None else "grid"
    _check_space(method, grid, ranges, random, optuna)
    base = load_recipe(recipe_path, list(overrides))
    t = base.trainer
    seed = t.seed if seed is None else seed

    def recipe_for(values: dict[str, Any]) -> Any:
        recipe = load_recipe(recipe_path, [*overrides, *trial_overrides(values)])
        check_monitors(recipe)
        return recipe

    # Every trial's recipe is validated before the first trial trains.
    if method == "grid":
        planned: list[dict[str, Any]] | None = grid_trials(grid)
    elif method == "random":
        planned = random_trials(random or 0, ranges, grid, seed)
    else:
        planned = None
        _import_optuna()
        bad = [f"{k}={v!r}" for k, vs in grid.items() for v in vs if not isinstance(v, (int, float, str, bool))]
        if bad:
            raise HarnessError(f"--optuna: --grid choices must be numbers, strings or booleans, got {', '.join(bad)}")
    checks = planned if planned is not None else [
        *({k: getattr(r, end) for k, r in ranges.items()} for end in ("low", "high")),
        *({k: v} for k, vs in grid.items() for v in vs),
    ]
    for key, r in ranges.items():  # each end of a range on its own: an error names the range
        for end in (r.low, r.high):
            try:
                recipe_for({key: end})
            except HarnessError as e:
                reason = str(e).removeprefix(f"{recipe_path}: ")
                raise HarnessError(f"--range {r.spec or key}: {reason}; give a range whose both ends are "
                                   "allowed values") from None
    for values in checks:
        recipe_for(values)

    keys = [*ranges, *grid]
    sweep_dir = None if t.fast_dev_run else command_folder(base, recipe_path, "sweep")
    total = len(planned) if planned is not None else optuna or 0
    print(f"sweep: {method}, {total} trials of {recipe_path} over {', '.join(keys)}; ranked by {t.monitor} ({t.mode}); "
          f"folder {sweep_dir or '(none: fast_dev_run)'}", flush=True)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc="trials", unit="trial", disable=not (t.progress and sys.stderr.isatty()))

    def run_trial(values: dict[str, Any], optuna_trial: Any = None) -> dict[str, Any]:
        number = len(rows) + 1
        trial_dir = None if sweep_dir is None else sweep_dir / f"trial-{number:03d}"
        recipe = recipe_for(values)
        last = validations_to_run(recipe)  # epochs, or a step-based run's validation intervals
        pruning = None if optuna_trial is None else OptunaPruning(optuna_trial, t.monitor, last)
        # test=False: no trial sees the test split while the search chooses; the chosen one is tested after.
        # Its HParams row: the swept values (a value equal to the default would be missing from the recipe's
        # changed keys), and its val/ scalars as metrics.
        run = Run(recipe, recipe_path, run_dir=trial_dir, callbacks=[pruning] if pruning else [], verbose=False,
                  test=False, hparams=values)
        row: dict[str, Any] = {"rank": None, "trial": number, "status": "done", "values": values, "value": None,
                               "best_epoch": None, "test": {}, "seconds": None,
                               "run_dir": str(trial_dir) if trial_dir else None}
        try:
            summary = run.execute()
        except NonFiniteLossError as e:
            row["status"] = "diverged"
            bar.write(f"trial {number}: {e}", file=sys.stderr)
        else:
            # a step-based recipe's summary says best_step: the column holds that step then
            best = summary.get("best_epoch", summary.get("best_step"))
            row.update(value=summary["best_value"], best_epoch=best, seconds=summary["wall_seconds"])
            if pruning is not None and pruning.pruned_at is not None:
                row["status"] = "pruned"
        rows.append(row)
        shown = "  ".join(f"{k}={_show(v)}" for k, v in values.items())
        outcome = row["status"] if row["value"] is None else f"{t.monitor} {row['value']:.4f} ({row['status']})"
        bar.write(f"trial {number}/{total}: {shown} -> {outcome}", file=sys.stdout)
        bar.update()
        if sweep_dir is not None:
            _write_csv(sweep_dir / "sweep.csv", rank_trials(rows, t.mode), keys, t.monitor)
        return row

    try:
        if planned is not None:
            for values in planned:
                run_trial(values)
        else:
            _optuna_search(optuna or 0, ranges, grid, seed, t.monitor, t.mode, run_trial)
    except (TrainingInterrupted, Interrupted, KeyboardInterrupt):
        bar.close()
        ranked = rank_trials(rows, t.mode)
        if rows:
            print(format_sweep(ranked, keys, t.monitor), flush=True)
        print(_continue_hint(rows, planned, total, sweep_dir), file=sys.stderr, flush=True)
        raise
    finally:
        bar.close()
    ranked = rank_trials(rows, t.mode)
    chosen = next((row for row in ranked if row["status"] == "done" and row["value"] is not None), None)
    tested = None
    if chosen is not None and chosen["run_dir"] is not None:
        tested = _test_chosen(chosen, recipe_for(chosen["values"]))
        if sweep_dir is not None:
            _write_csv(sweep_dir / "sweep.csv", ranked, keys, t.monitor)
    print(format_sweep(ranked, keys, t.monitor), flush=True)
    # text_chars has no test split: the chosen trial is scored on the whole validation text, which the others saw
    unseen = "" if base.data.name == TEXT_CHARS else "; no other trial saw the test split"
    print(f"# test: {tested or 'no trial was tested (none finished, or fast_dev_run wrote no checkpoint)'}{unseen}",
          flush=True)
    if sweep_dir is not None:
        print(f"sweep folder: {sweep_dir}  (tensorboard --logdir {sweep_dir}, HPARAMS tab)", flush=True)
    return {"sweep_dir": str(sweep_dir) if sweep_dir else None, "monitor": t.monitor, "mode": t.mode,
            "method": method, "seed": seed, "keys": keys, "trials": ranked, "tested": tested}


def _test_chosen(chosen: dict[str, Any], recipe: Any) -> str:
    """Score the chosen trial's best.pt (else last.pt) on the test split, once; its figures go into its row."""
    run_dir = Path(chosen["run_dir"])
    best = best_checkpoint(run_dir)
    checkpoint = best if best.exists() else last_checkpoint(run_dir)
    scores = evaluate(recipe, checkpoint, "test", verbose=False)
    if recipe.data.name == TEXT_CHARS:  # a language model: per token, on the one held-out text
        chosen["test"] = {name: scores[name] for name in ("loss", "bits_per_token", "perplexity", "token_accuracy")}
        return (f"only trial {chosen['trial']}, the chosen one, was scored after the search: {checkpoint.name} "
                f"(step {scores['step']}) on the whole validation text, {scores['num_tokens']} tokens; text_chars has "
                "no test split, and the trials were ranked on batches of that same text: not an independent test")
    chosen["test"] = {"loss": scores["loss"], "accuracy": scores["accuracy"],
                      "macro_f1": scores["averages"]["macro"]["f1"]}
    return (f"only trial {chosen['trial']}, the chosen one, was scored on the test split, after the search: "
            f"{checkpoint.name} (epoch {scores['epoch']}), {scores['num_samples']} samples")


def _continue_hint(rows: list[dict[str, Any]], planned: list[dict[str, Any]] | None, total: int,
                   sweep_dir: Path | None) -> str:
    """What an interrupted sweep kept and how to go on, in one line."""
    kept = f"the {len(rows)} finished trials are ranked in {sweep_dir / 'sweep.csv'}" if sweep_dir and rows else \
        "no trial finished"
    if planned is None:
        rest = f"to continue, run the search again with --optuna {total - len(rows)} (a new study)"
    else:
        left = planned[len(rows):]
        shown = "; ".join(" ".join(trial_overrides(v)) for v in left[:4]) + ("; ..." if len(left) > 4 else "")
        rest = f"to continue, sweep the {len(left)} trials that did not finish: {shown}"
    return (f"sweep interrupted after {len(rows)} of {total} trials: {kept} (no trial was tested); {rest}")


def rank_trials(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Finished trials best first, then pruned ones, then those without a value; `rank` set 1..n."""
    order = {"done": 0, "pruned": 1}

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row["value"]
        if value is None or math.isnan(value):
            return 2, 0.0
        return order.get(row["status"], 2), -value if mode == "max" else value

    ranked = sorted(rows, key=key)  # stable: ties keep trial order
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return ranked


def format_sweep(ranked: list[dict[str, Any]], keys: list[str], monitor: str) -> str:
    """The ranked table; test/ columns hold the chosen trial's figures only (no other trial is tested)."""
    test_names = sorted({name for row in ranked for name in row["test"]})
    header = ["rank", "trial", *keys, monitor, *(f"test/{n}" for n in test_names), "seconds", "status"]
    rows = [[row["rank"], row["trial"], *(_show(row["values"].get(k)) for k in keys), _show(row["value"], 4),
             *(_show(row["test"].get(n), 4) for n in test_names), _show(row["seconds"], 1), row["status"]]
            for row in ranked]
    return format_table(header, rows)


def _check_space(method: str, grid: dict[str, list[Any]], ranges: dict[str, Range], random: int | None,
                 optuna: int | None) -> None:
    if random is not None and optuna is not None:
        raise HarnessError("give --random N or --optuna N, not both")
    count = random if method == "random" else optuna
    if method != "grid" and (count is None or count < 1):
        raise HarnessError(f"--{method} N: N must be at least 1, got {count}")
    if method == "grid" and ranges:
        raise HarnessError("--range needs --random N or --optuna N (a grid takes --grid key=value1,value2)")
    if not grid and not ranges:
        raise HarnessError("nothing to sweep: give --grid key=value1,value2 and/or --range key=low:high "
                           "with --random N")
    for key, values in grid.items():
        if not values:
            raise HarnessError(f"--grid {key}=: no values")
    both = sorted(set(grid) & set(ranges))
    if both:
        raise HarnessError(f"{', '.join(both)}: given both as --grid and as --range; keep one")


def _import_optuna() -> Any:
    try:
        import optuna  # noqa: PLC0415  (optional: the `sweep` extra; only --optuna needs it)
    except ImportError:
        raise HarnessError(INSTALL_OPTUNA) from None
    return optuna


def _optuna_search(n: int, ranges: dict[str, Range], choices: dict[str, list[Any]], seed: int, monitor: str,
                   mode: str, run_trial: Callable[..., dict[str, Any]]) -> None:
    optuna = _import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial
    study = optuna.create_study(
        direction="maximize" if mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        # Prune a trial whose value at an epoch is worse than the median of earlier trials at that epoch.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )

    def objective(trial: Any) -> float:
        values: dict[str, Any] = {}
        for key, r in ranges.items():
            suggest = trial.suggest_int if r.integer else trial.suggest_float
            values[key] = suggest(key, r.low, r.high, log=r.log)
        for key, options in choices.items():
            values[key] = trial.suggest_categorical(key, options)
        row = run_trial(values, optuna_trial=trial)
        if row["status"] == "pruned":  # stopped by the pruner before its last epoch
            raise optuna.TrialPruned(f"pruned before its last epoch (trial {row['trial']})")
        return math.nan if row["value"] is None else row["value"]  # NaN: Optuna records a failed trial

    study.optimize(objective, n_trials=n)


def _write_csv(path: Path, ranked: list[dict[str, Any]], keys: list[str], monitor: str) -> None:
    """sweep.csv, written atomically: the previous version or the new one, never a torn file."""
    test_names = sorted({name for row in ranked for name in row["test"]})
    text = io.StringIO()
    out = csv.writer(text)
    out.writerow(["rank", "trial", "status", *keys, monitor, "best_epoch", *(f"test/{n}" for n in test_names),
                  "seconds", "run_dir"])
    for row in ranked:
        out.writerow([row["rank"], row["trial"], row["status"], *(row["values"].get(k) for k in keys),
                      row["value"], row["best_epoch"], *(row["test"].get(n) for n in test_names),
                      row["seconds"], row["run_dir"]])
    atomic_save(text.getvalue().encode(), path, raw=True)


def _show(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits is not None else f"{value:.4g}"
    return str(value)
