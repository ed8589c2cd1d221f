"""One training run of a recipe, as a self-describing folder.

runs/<name>/<timestamp>/
    config.yaml         the resolved recipe (file + overrides + defaults)
    history.jsonl       one JSON object per logged step: each epoch's scalars, then the test scalars
    summary.json        best epoch, final validation and test metrics, wall time, device, versions
    events.out.tfevents.*   TensorBoard scalars (train/, val/, test/, lr, lr_end, epoch_seconds, samples_per_s,
                        with trainer.throughput tokens_per_s, flops_per_s, mfu, peak_memory_mb),
                        the custom-scalars layout, the recipe as text, the run's HParams row
    checkpoints/last.pt, checkpoints/best.pt
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.core import faults
from harness.core.callbacks import Callback
from harness.core.device import unwrap_model
from harness.core.distributed import broadcast_object, broadcast_tensors, current
from harness.core.loggers import TensorBoardLogger
from harness.core.run import dashboard_charts, load_best_weights, run_summary
from harness.core.sharded_checkpoint import read_checkpoint_state
from harness.core.trainer import Trainer
from harness.data.text_chars import TEXT_CHARS
from harness.errors import HarnessError, Interrupted
from harness.recipe.build import epochs_to_run, logged_names, run_monitor, steps_to_run, validation_interval
from harness.recipe.data import Data
from harness.recipe.parts import build_training, setup
from harness.recipe.resume import check_resume, recorded_run_folder
from harness.recipe.run_folder import (
    SUMMARY,
    check_run_parent,
    command_folder,
    command_parent,
    last_checkpoint,
    nearest_existing,
    remove_empty_folders,
    write_config,
    write_summary,
)
from harness.recipe.schema import Recipe, changed_keys, dump_yaml
from harness.recipe.weights import check_vocabulary


def train(recipe: Recipe, recipe_path: str | Path | None = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Train a validated `Recipe` end to end; returns the summary (also written to summary.json)."""
    return Run(recipe, recipe_path=recipe_path, resume=resume).execute()


class Run:
    """Build everything from a recipe, fit, test the best checkpoint, write summary.json.

    `run_dir` puts the run in that folder instead of <logging.root>/<name>/<time>/ (sweep trials);
    `callbacks` are added to the Trainer's (a sweep's pruning); `verbose=False` prints only what
    the Trainer prints (no resolved recipe, no test line); `test=False` fits without the final test
    (a sweep's trials: only the chosen one is scored on the test split, afterwards), and the summary's
    "test" is then None. `hparams`: the keys of the run's HParams row (a sweep's swept values, a
    comparison's model and seed); None: the recipe's keys that differ from the defaults.
    """

    def __init__(self, recipe: Recipe, recipe_path: str | Path | None = None, resume: str | Path | None = None,
                 trainer_class: type[Trainer] = Trainer, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), verbose: bool = True, test: bool = True,
                 hparams: Mapping[str, Any] | None = None) -> None:
        self.recipe = recipe
        self.recipe_path = Path(recipe_path) if recipe_path is not None else None
        self.resume = Path(resume) if resume is not None else None
        self.trainer_class = trainer_class
        self.callbacks = list(callbacks)
        self.verbose = verbose
        self.test = test
        self.hparams = hparams
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self.trainer: Trainer | None = None
        self.data: Data | None = None

    def execute(self) -> dict[str, Any]:
        recipe, t = self.recipe, self.recipe.trainer
        if not t.fast_dev_run and self.run_dir is None and self.resume is None:
            check_run_parent(recipe, self.recipe_path)  # a bad logging.root fails now, not after the data
        # Under torchrun: the process group (the command's exit tears it down) and this rank's GPU;
        # a bad device fails here, before any data is read.
        env = setup(recipe)
        self.verbose = self.verbose and env.dist.is_main
        resumed = read_checkpoint_state(self.resume) if self.resume is not None else None
        if resumed is not None:
            check_resume(resumed, recipe, self.resume, world_size=env.dist.world_size)
        # Only rank 0 writes: the other ranks get no run folder, hence no checkpoints and no loggers.
        given_folder = self.run_dir is not None  # by the caller: a sweep trial, a compared model
        made_here = not given_folder and resumed is None  # a new folder this run makes for itself
        # The nearest folder that exists before this run makes its own: bad input found while building
        # removes what the run made below it, and nothing above.
        existed = nearest_existing(command_parent(recipe, self.recipe_path)) if made_here else None
        self.run_dir = None if t.fast_dev_run or not env.dist.is_main else self._make_run_dir(resumed)
        # Under FSDP every rank writes its slice of each checkpoint into rank 0's run folder.
        shared = None
        if t.strategy == "fsdp" and env.dist.world_size > 1:
            shared = broadcast_object(str(self.run_dir) if self.run_dir is not None else None)
            shared = Path(shared) if shared is not None else None
        finished = self._finished_summary(resumed)
        if env.dist.world_size > 1:  # rank 0 alone reads the run folder: every rank follows its decision
            finished = broadcast_object(finished)
        if finished is not None:
            return finished
        try:
            faults.reached("run:building")
            dashboard = Dashboard(recipe, self.hparams, tested=self.test)
            parts = build_training(recipe, env, self.run_dir, resuming=self.resume is not None,
                                   resume_hint=self._resume_hint(), trainer_class=self.trainer_class,
                                   callbacks=[*self.callbacks, dashboard], shared_run_dir=shared)
            dashboard.validates = parts.data.val is not None
        except (HarnessError, Interrupted):
            # Bad input found (or a signal) while building: leave no empty folder behind that this run made.
            if existed is not None and self.run_dir is not None:
                remove_empty_folders(self.run_dir, stop_at=existed)
            raise
        self.data, self.trainer = parts.data, parts.trainer
        trainer, data = parts.trainer, parts.data
        if resumed is not None:
            assert self.resume is not None
            # Text: the file(s) may have changed on disk since the checkpoint, and the ids with them.
            check_vocabulary(resumed, data.vocabulary, self.resume)
        if self.verbose:
            print(f"# resolved recipe{f' ({self.recipe_path})' if self.recipe_path else ''}\n{dump_yaml(recipe)}",
                  end="")
            print(f"# device {trainer.device}, run folder {self.run_dir or '(none: fast_dev_run)'}", flush=True)
            if parts.initialised:
                print(f"# {parts.initialised}", flush=True)
        if self.run_dir is not None:  # on a resume too: the keys a resume may change are recorded
            write_config(self.run_dir, recipe)

        started = time.perf_counter()
        try:
            trainer.fit(data.train, data.val, epochs=epochs_to_run(recipe), resume_from=self.resume,
                        max_steps=steps_to_run(recipe), val_every_n_steps=validation_interval(recipe))
            fit_seconds = time.perf_counter() - started
            test: dict[str, Any] | None = None
            tested: str | None = None
            if self.test:
                tested = load_best_weights(trainer)
                # rank 0 read best.pt: every rank tests the same weights (sharded: every rank read its slice)
                if env.dist.world_size > 1 and not trainer.sharded_checkpoints:
                    broadcast_tensors(_tested_tensors(trainer))
                    tested = broadcast_object(tested)
                try:
                    faults.reached("run:testing")
                    test = trainer.evaluate(data.test)
                except Interrupted as e:
                    if self.run_dir is not None:
                        e.hint = f"training is complete and saved; to run the test: {self._resume_hint()}"
                    raise
        finally:
            trainer.close()
        summary = self._summary(test, tested, fit_seconds, time.perf_counter() - started)
        if self.verbose and test is not None:
            print(f"test: {_format(test)}  ({summary['test_covers']}; {tested})", flush=True)
        if self.run_dir is not None:
            write_summary(self.run_dir, summary)
            if self.verbose:
                print(f"run folder: {self.run_dir}", flush=True)
        return summary

    def _make_run_dir(self, resumed: dict[str, Any] | None) -> Path:
        if self.run_dir is not None:  # given by the caller
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return self.run_dir
        if resumed is not None:
            assert self.resume is not None
            folder = recorded_run_folder(resumed, self.resume)
            if folder is not None:
                return folder
            folder = command_folder(self.recipe, self.recipe_path)
            if self.verbose:
                print(f"# {self.resume} lies outside the run folder it was written in; the resumed run goes to "
                      f"a new run folder, {folder}", flush=True)
            return folder
        return command_folder(self.recipe, self.recipe_path)

    def _finished_summary(self, resumed: dict[str, Any] | None) -> dict[str, Any] | None:
        """A resume of a run that already finished (all epochs, tested, summary written): say so and
        return its summary, instead of testing again and logging a second test line."""
        if resumed is None or self.run_dir is None:
            return None
        summary_path = self.run_dir / SUMMARY
        steps = steps_to_run(self.recipe)
        # (unit, where the checkpoint is, the run's length): epochs, or optimizer steps for a step-based run
        unit, at, length = ("epoch", resumed["epoch"], epochs_to_run(self.recipe)) if steps is None else \
            ("step", resumed["global_step"], steps)
        done = at >= length and not resumed.get("batch_in_epoch")
        if not done or not summary_path.is_file():
            return None
        summary = json.loads(summary_path.read_text())
        if summary.get(f"{unit}s_run") != at:
            return None
        if self.verbose:
            key = "trainer.epochs" if steps is None else "trainer.max_steps"
            print(f"already finished: {self.resume} is {unit} {at} of {key}={length} and the run was tested; "
                  f"nothing to do (to train longer, resume with {key}=N)", flush=True)
        return summary

    def _resume_hint(self) -> str | None:
        if self.run_dir is None:
            return None
        # The run's config.yaml, not the recipe file: it holds the overrides too, which a resume
        # from the bare recipe would silently drop (or refuse, when they changed the model).
        sharded = self.recipe.trainer.strategy == "fsdp"
        return (f"python -m harness.train {self.run_dir / 'config.yaml'} "
                f"--resume {last_checkpoint(self.run_dir, sharded)}")

    def _summary(self, test: dict[str, Any] | None, tested: str | None, fit_seconds: float,
                 wall_seconds: float) -> dict[str, Any]:
        assert self.trainer is not None
        monitor, mode = run_monitor(self.recipe, validates=self.data is not None and self.data.val is not None)
        why = "trainer.fast_dev_run" if self.recipe.trainer.fast_dev_run else "trainer.limit_test_batches"
        summary = {"recipe": str(self.recipe_path) if self.recipe_path else None,
                   **run_summary(self.trainer, monitor=monitor, mode=mode, test=test, tested=tested,
                                 fit_seconds=fit_seconds, wall_seconds=wall_seconds, test_limit_reason=why,
                                 text=self.recipe.data.name == TEXT_CHARS,  # a corpus: tokens, not samples
                                 throughput=_throughput_summary(self.trainer, self.recipe)
                                 if self.trainer.throughput else None)}
        summary["run_dir"] = str(self.run_dir) if self.run_dir else None  # rank 0's, on every rank
        return summary


class Dashboard(Callback):
    """TensorBoard as a dashboard, written once when a run starts (not again on a resume): the custom-scalars
    layout (train and validation loss on one chart, each validation metric, the learning rate, the
    throughput), the resolved recipe as text, and the run's HParams row.

    The HParams row: `hparams` (None: the recipe's keys that differ from the schema's defaults) and, as
    its metrics, the run's validation scalars and, when the run is `tested`, its test scalars, under the
    very tags of those scalars (`val/acc`, `test/loss`, ...): TensorBoard shows each one's last logged
    value, so the row holds no copy of a figure and the curves gain no extra point. Train, sweep and
    compare all write their rows here, so one name means one figure in every HParams tab."""

    def __init__(self, recipe: Recipe, hparams: Mapping[str, Any] | None = None, tested: bool = True) -> None:
        self.recipe = recipe
        self.hparams = dict(hparams) if hparams is not None else None
        self.tested = tested
        self.validates = True  # whether the run has validation data: set once the data is built

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.epoch or trainer.batch_in_epoch:  # a resume: the run's start wrote all this
            return
        for logger in trainer.loggers or ():
            if isinstance(logger, TensorBoardLogger):
                self.write(logger)

    def write(self, logger: TensorBoardLogger) -> None:
        names = logged_names(self.recipe, self.validates)
        metrics = [name for name in names if name.startswith("val/") and name != "val/loss"]
        logger.layout(dashboard_charts(names))
        logger.text("recipe", "    " + dump_yaml(self.recipe).rstrip("\n").replace("\n", "\n    "))
        tested = ["test/loss", *(f"test/{name.removeprefix('val/')}" for name in metrics)] if self.tested else []
        validated = [name for name in names if name.startswith("val/")]
        logger.run_hparams(changed_keys(self.recipe) if self.hparams is None else self.hparams, [*validated, *tested])


def _tested_tensors(trainer: Trainer) -> list[torch.Tensor]:
    """The model's state and any callback tensors (the EMA average) that testing depends on."""
    tensors = list(unwrap_model(trainer.model).state_dict().values())
    for callback in trainer.callbacks:
        shadow = getattr(callback, "shadow", None)
        if isinstance(shadow, dict):
            tensors.extend(shadow.values())
    return tensors


def _format(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def _throughput_summary(trainer: Trainer, recipe: Recipe) -> dict[str, Any]:
    """`trainer.throughput`'s figures over the run: the median over validation intervals of the rates (a
    shared machine's slow spells move a mean), the largest peak memory, and the FLOPs of one optimizer step
    (the first batch's count, times the batches of a step on every rank)."""
    rates = {key: statistics.median(h[key] for h in trainer.history) for key in ("tokens_per_s", "flops_per_s", "mfu")
             if trainer.history and all(key in h for h in trainer.history)}
    per_step = None
    if trainer.flops_per_sample is not None:
        per_step = trainer.flops_per_sample * recipe.data.batch_size * trainer.accumulate_grad_batches \
            * current().world_size
    return {"flops_per_step": per_step, **rates,
            "peak_memory_mb": max((h["peak_memory_mb"] for h in trainer.history), default=None)}
