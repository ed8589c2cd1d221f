"""A run folder from Python, without a recipe: the folder, the test of the best checkpoint and summary.json
that `python -m harness.train` makes, for a Trainer built by hand.

    run_dir = new_run_folder("runs/my-exp")          # runs/my-exp/<timestamp>/
    trainer = Trainer(..., log_dir=run_dir,          # history.jsonl and TensorBoard events
                      callbacks=[ModelCheckpoint(run_dir / "checkpoints", monitor="val/acc", mode="max")])
    summary = fit_and_test(trainer, train_data, val_data, test_data, epochs=5)   # + summary.json

The training command builds its summary with `run_summary` and tests with `load_best_weights` too, so
the two folders hold the same files with the same keys (the command adds `recipe` and `config.yaml`).
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from harness import __version__
from harness.core.callbacks import ModelCheckpoint, best_entry
from harness.core.checkpoint import atomic_save
from harness.core.loggers import TensorBoardLogger, strict_json
from harness.core.memory import gather, peak_memory_bytes
from harness.errors import HarnessError
from harness.metrics import Accuracy
from harness.stats import wilson_interval

if TYPE_CHECKING:  # annotations only: the Trainer is passed in
    from harness.core.trainer import Trainer

SUMMARY = "summary.json"


def new_run_folder(parent: str | Path) -> Path:
    """Create and return <parent>/<timestamp>/ (`-2`, `-3`, ... when that second is taken).

    The folder is claimed by `mkdir` itself, not by a look first: runs started at the same instant
    in several processes each get their own folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder, suffix = parent / stamp, 1
        while True:
            try:
                folder.mkdir()
                return folder
            except FileExistsError:  # taken, by an earlier run or a concurrent one: the next suffix
                suffix += 1
                folder = parent / f"{stamp}-{suffix}"
    except OSError as e:
        raise HarnessError(f"cannot make a run folder in {parent} ({e.strerror or e})") from None


def fit_and_test(trainer: Trainer, train_data: Iterable[Any], val_data: Iterable[Any] | None = None,
                 test_data: Iterable[Any] | None = None, *, epochs: int,
                 resume_from: str | Path | None = None) -> dict[str, Any]:
    """What the training command does after building its parts: fit, test the best checkpoint's weights
    (the `ModelCheckpoint` callback's best.pt, else the final weights) on `test_data`, and write
    summary.json into the Trainer's `log_dir` (atomically; nothing when `log_dir` is None). Returns the summary.

    Also writes TensorBoard's custom-scalars layout from the scalars the run logged (train and validation
    loss on one chart, each validation metric, the learning rate, the throughput), once, when the run ends.
    """
    started = time.perf_counter()
    try:
        trainer.fit(train_data, val_data, epochs=epochs, resume_from=resume_from)
        fit_seconds = time.perf_counter() - started
        test = tested = None
        if test_data is not None:
            tested = load_best_weights(trainer)
            test = trainer.evaluate(test_data)
        if trainer.history:
            for logger in trainer.loggers or ():
                if isinstance(logger, TensorBoardLogger):
                    logger.layout(dashboard_charts(list(trainer.history[-1])))
    finally:
        trainer.close()
    saver = _model_checkpoint(trainer)
    tracker = saver.tracker if saver is not None else None
    summary = run_summary(trainer, monitor=tracker.monitor if tracker else None,
                          mode=tracker.mode if tracker else "max", test=test, tested=tested,
                          fit_seconds=fit_seconds, wall_seconds=time.perf_counter() - started)
    if trainer.log_dir is not None:
        write_summary(trainer.log_dir, summary)
    return summary


def dashboard_charts(names: list[str]) -> dict[str, list[str]]:
    """The custom-scalars layout of a run that logs these scalars: chart title -> the tags it draws."""
    metrics = [name for name in names if name.startswith("val/") and name != "val/loss"]
    charts = {"loss": [name for name in ("train/loss", "val/loss") if name in names]}
    charts.update({name: [name] for name in metrics})
    charts["learning rate (lr: at the epoch's start, lr_end: after its last step)"] = ["lr", "lr_end"]
    charts["throughput (training samples/s)"] = ["samples_per_s"]
    for name, title in (("tokens_per_s", "training tokens/s"), ("flops_per_s", "achieved FLOP/s"),
                        ("peak_memory_mb", "peak memory (MB)")):
        if name in names:  # Trainer(throughput=True)
            charts[title] = [name]
    return charts


def load_best_weights(trainer: Trainer) -> str:
    """Load the best checkpoint's weights (and callback states: the EMA average) into the Trainer, when
    its `ModelCheckpoint` wrote one; epoch and history stay those of the run. Says which weights it holds."""
    saver = _model_checkpoint(trainer)
    if saver is None or not saver.best_path.exists():
        return f"final weights, {_at(trainer, trainer.epoch, trainer.global_step)}"
    # A sharded checkpoint (trainer strategy "fsdp"): every rank calls this, and each reads its slice.
    state = trainer.load_weights_from(saver.best_path)
    return f"{saver.best_path.name}, {_at(trainer, state['epoch'], state['global_step'])}"


def _at(trainer: Trainer, epoch: int, step: int) -> str:
    """`epoch 4`, or `step 2000` in step-based training."""
    return f"epoch {epoch}" if trainer.max_steps is None else f"step {step}"


def run_summary(trainer: Trainer, *, monitor: str | None, mode: Literal["min", "max"],
                test: dict[str, Any] | None, tested: str | None, fit_seconds: float, wall_seconds: float,
                test_limit_reason: str = "limit_test_batches", text: bool = False,
                throughput: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json's content: the best epoch (or step, in step-based training) of `monitor`, the final
    scalars, the test results with how many samples they cover and the 95 % Wilson intervals of the
    accuracies, times, device, memory (per rank: the model's state at the first step, and the
    peak), versions.

    `test_limit_reason` names the setting that limited the test batches, in `test_covers`; `text`: the
    test pass counted predicted tokens of a text corpus's validation split; `throughput`: the run's rates."""
    history = trainer.history
    best = best_entry(history, monitor, mode) if monitor else None
    samples = trainer.last_pass_samples if test is not None else None
    unit, run = ("epoch", trainer.epoch) if trainer.max_steps is None else ("step", trainer.global_step)
    return {
        "run_dir": str(trainer.log_dir) if trainer.log_dir else None,
        "monitor": monitor,
        f"best_{unit}": best[unit] if best else None,
        "best_value": best[monitor] if best else None,
        f"{unit}s_run": run,
        "final": history[-1] if history else None,
        "test": test,
        "test_samples": samples,
        # Accuracies are proportions: their Wilson interval over the test samples (harness.stats).
        "test_intervals": _accuracy_intervals(trainer, test, samples or 0),
        # what the test figures cover, in words: the whole split, or the first N batches of it
        "test_covers": describe_test_coverage(samples or 0, trainer.limit_test_batches, test_limit_reason, text)
        if test is not None else "not tested",
        "tested_weights": tested,
        "fit_seconds": round(fit_seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "device": str(trainer.device),
        "device_name": (torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "throughput": throughput,
        # bytes of parameters, gradients and optimizer state each rank held, against the whole model's
        "memory": trainer.memory,
        "peak_memory": _peak_memory(trainer.device),
        "versions": {"harness": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                     "torchvision": _torchvision_version()},
    }


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """`<run_dir>/summary.json`, written atomically; strict JSON: a NaN or infinity is written as null."""
    path = Path(run_dir) / SUMMARY
    atomic_save(strict_json(summary, indent=2).encode(), path, raw=True)
    return path


def describe_test_coverage(samples: int, limit: int | None, reason: str = "limit_test_batches",
                           text: bool = False) -> str:
    """What the test figures cover, in words: the whole split, or its first batches and why. Text data
    (text_chars) counts predicted characters, and its test pass scores the validation split: it has no other."""
    what, split = ("tokens", "validation split (text_chars has no test split)") if text else ("samples", "test split")
    if limit is None:
        return f"{samples} {what}: the whole {split}"
    return f"only {samples} {what}: the first {limit} batch{'es' * (limit > 1)} of the {split} ({reason})"


def _accuracy_intervals(trainer: Trainer, test: dict[str, Any] | None, samples: int) -> dict[str, list[float]]:
    """95 % Wilson intervals of the test accuracies (the Trainer's `Accuracy` metrics, top-k included)."""
    if not test or not samples:
        return {}
    return {name: [*wilson_interval(round(test[name] * samples), samples)]
            for name, metric in trainer.metrics.items()
            if isinstance(metric, Accuracy) and isinstance(test.get(name), float)}


def _peak_memory(device: torch.device) -> dict[str, Any]:
    """Every rank's peak memory (under torchrun every rank calls this), and what was measured."""
    peaks = gather(peak_memory_bytes(device))
    return {"per_rank_bytes": [peak for peak, _ in peaks], "measure": peaks[0][1]}


def _model_checkpoint(trainer: Trainer) -> ModelCheckpoint | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)


def _torchvision_version() -> str | None:
    try:
        import torchvision  # noqa: PLC0415  (a second of import time: only when a summary is written)
    except ImportError:  # the Python API needs no torchvision; the recipes' data sets do
        return None
    return torchvision.__version__
