"""Callbacks: the one extension mechanism for features that hang on the loop.

The Trainer calls each event below on its own `on_*` method (override it in a subclass) and then on
every callback, in order. The built-ins (checkpoints, early stopping, EMA) are written on exactly
this class, so a user's own callback has the same powers.

| event                | when it runs                                          | typical use                    |
|----------------------|-------------------------------------------------------|--------------------------------|
| on_fit_start         | once, before the first epoch (after a resume is loaded) | check settings, open files   |
| on_epoch_start       | before each training epoch (step-based: interval)     | change data, freeze layers     |
| on_train_batch_end   | after each training batch (loss is a device tensor)   | EMA update; avoid host syncs   |
| on_validation_start  | before each validation / test pass                    | swap in averaged weights       |
| on_validation_end    | after it, with the metrics as floats                  | swap weights back              |
| on_epoch_end         | after validation, with the epoch's logs (floats)      | checkpoints, early stopping    |
| on_interrupt         | SIGINT / SIGTERM arrived; the current step finished   | write a resumable checkpoint   |
| on_fit_end           | once, after the last epoch (not after an interrupt)   | close files, summaries         |

In step-based training (`fit(max_steps=...)`) an "epoch" of these events is one validation interval of
`val_every_n_steps` optimizer steps. A callback that keeps state across epochs returns it from
`state_dict()`; checkpoints store it and a resume hands it back through `load_state_dict()`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from harness.core import faults, sharded_checkpoint
from harness.core.checkpoint import atomic_copy
from harness.core.device import unwrap_model
from harness.core.distributed import is_main_process

if TYPE_CHECKING:  # annotations only: the Trainer imports this module
    from harness.core.trainer import Trainer


class Callback:
    """Base class: every event is a no-op; override the ones you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: Tensor) -> None: ...
    def on_validation_start(self, trainer: Trainer) -> None: ...
    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None: ...
    def on_interrupt(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# One default for every watcher of a metric: best.pt, early stopping and the recipe's trainer.monitor.
DEFAULT_MONITOR = "val/acc"
DEFAULT_MODE: Literal["min", "max"] = "max"


def callback_key(callback: Callback, index: int) -> str:
    """The name a callback's state is stored under in a checkpoint."""
    return f"{index}:{type(callback).__name__}"


def best_entry(history: list[dict[str, Any]], monitor: str, mode: Literal["min", "max"]) -> dict[str, Any] | None:
    """The history entry (epoch) with the best `monitor` value, the first of equals; None when never logged."""
    scored = [h for h in history if monitor in h]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda h: h[monitor])


class Monitor:
    """Tracks the best value of one logged metric; `improved(value)` updates it."""

    def __init__(self, monitor: str, mode: Literal["min", "max"] = "max", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r}: allowed are 'min', 'max'")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf

    def value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            raise KeyError(f"monitor {self.monitor!r} is not among the logged metrics: {sorted(logs)}")
        return float(logs[self.monitor])

    def improved(self, value: float) -> bool:
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best = value
        return better


class ModelCheckpoint(Callback):
    """Writes `last.pt` after every epoch (and on SIGINT/SIGTERM) and `best.pt` when `monitor` improves.

    `extra` is stored in every checkpoint (the CLI stores the resolved recipe there). `sharded`: the
    Trainer writes sharded checkpoints (strategy "fsdp"), links named `last` and `best` to folders
    (`harness.core.sharded_checkpoint`); every rank then has this callback, and every rank writes.
    """

    def __init__(self, dirpath: str | Path, monitor: str | None = DEFAULT_MONITOR,
                 mode: Literal["min", "max"] = DEFAULT_MODE, extra: dict[str, Any] | None = None,
                 resume_hint: str | None = None, sharded: bool = False) -> None:
        self.dirpath = Path(dirpath)
        self.tracker = Monitor(monitor, mode) if monitor else None
        self.extra = extra or {}
        self.resume_hint = resume_hint
        self.sharded = sharded
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / ("last" if self.sharded else "last.pt")

    @property
    def best_path(self) -> Path:
        return self.dirpath / ("best" if self.sharded else "best.pt")

    def on_fit_start(self, trainer: Trainer) -> None:
        # A process killed mid-write leaves its temporary file (never a broken last.pt): clear them.
        if not is_main_process():
            return
        for stale in self.dirpath.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)
        if self.sharded:  # a killed sharded save: its temporary folder, or a folder no link points to
            sharded_checkpoint.remove_unreferenced(self.dirpath)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        # The "best" verdict is part of the saved state, so it is decided first. best.pt is written
        # before last.pt: a process killed between the two resumes from the previous last.pt, whose
        # verdict has not seen this epoch yet, so the epoch is redone and best.pt written again. (In
        # the other order the resumed run would believe best.pt holds this epoch and never write it.)
        improved = self.tracker is not None and self.tracker.improved(self.tracker.value(logs))
        if improved:
            self.best_epoch = epoch
            trainer.save_checkpoint(self.best_path, extra=self.extra)
            faults.reached("best:written")
            if self.sharded:
                sharded_checkpoint.copy(self.best_path, self.last_path)
            else:
                atomic_copy(self.best_path, self.last_path)
        else:
            trainer.save_checkpoint(self.last_path, extra=self.extra)

    def on_interrupt(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.last_path, extra=self.extra)
        if not is_main_process():
            return
        hint = self.resume_hint or f"Trainer.fit(..., resume_from={str(self.last_path)!r})"
        print(f"\ninterrupted: saved {self.last_path} ({trainer.position()}); resume with: {hint}",
              file=sys.stderr, flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best if self.tracker else None, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tracker is not None and state.get("best") is not None:
            self.tracker.best = state["best"]
        self.best_epoch = state.get("best_epoch")


class EarlyStopping(Callback):
    """Stops `fit` when `monitor` has not improved by more than `min_delta` for `patience` epochs
    (step-based training: validations)."""

    def __init__(self, monitor: str = DEFAULT_MONITOR, mode: Literal["min", "max"] = DEFAULT_MODE, patience: int = 3,
                 min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.tracker = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.tracker.improved(self.tracker.value(logs)):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.should_stop = True
            # step-based training validates every interval: patience counts validations there
            where, unit = (f"epoch {epoch}", "epoch(s)") if trainer.max_steps is None else \
                (f"step {trainer.global_step}", "validation(s)")
            print(f"early stopping at {where}: {self.tracker.monitor} has not improved for "
                  f"{self.patience} {unit}; best {self.tracker.best:.6g}", file=sys.stderr, flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best, self.wait, self.stopped_epoch = state["best"], state["wait"], state["stopped_epoch"]


class EMA(Callback):
    """Exponential moving average of the weights, updated after every optimizer step:
    ema = decay * ema + (1 - decay) * weights. Validation and test run on the averaged weights
    (swapped in for the pass, then swapped back); the average is saved in the checkpoint.

    The average lives on the model's device, beside the weights (a checkpoint's average, read on the CPU,
    is copied into it in place), and each step is one fused `torch._foreach_lerp_` over tensor lists
    built once per `fit`, not a walk over a fresh `state_dict()`."""

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] | None = None
        self._backup: dict[str, Tensor] | None = None
        self._seen_step = -1
        # (averaged, model's) float tensors and (copied, model's) integer buffers (BN's batch count)
        self._floats: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._others: tuple[list[Tensor], list[Tensor]] = ([], [])

    def _model_state(self, trainer: Trainer) -> dict[str, Tensor]:
        return unwrap_model(trainer.model).state_dict()

    def on_fit_start(self, trainer: Trainer) -> None:
        # state_dict() values share storage with the parameters and buffers, which the optimizer and
        # load_state_dict update in place: lists of them stay current for the whole fit.
        state = self._model_state(trainer)
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        else:  # restored from a checkpoint, which loads on the CPU: follow the model to its device
            self.shadow = {k: v.to(state[k].device) for k, v in self.shadow.items()}
        floats = [k for k, v in self.shadow.items() if v.is_floating_point()]
        others = [k for k in self.shadow if k not in floats]
        self._floats = ([self.shadow[k] for k in floats], [state[k] for k in floats])
        self._others = ([self.shadow[k] for k in others], [state[k] for k in others])
        self._seen_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: Tensor) -> None:
        if trainer.global_step == self._seen_step or self.shadow is None:
            return  # accumulating gradients: no optimizer step yet
        self._seen_step = trainer.global_step
        averaged, weights = self._floats
        torch._foreach_lerp_(averaged, weights, 1.0 - self.decay)  # one fused kernel for all float tensors
        if self._others[0]:
            torch._foreach_copy_(*self._others)

    def on_validation_start(self, trainer: Trainer) -> None:
        if self.shadow is None:
            return
        model = unwrap_model(trainer.model)
        self._backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self._backup is None:
            return
        unwrap_model(trainer.model).load_state_dict(self._backup)
        self._backup = None

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["shadow"]
        if self.shadow is not None and saved is not None and saved.keys() == self.shadow.keys():
            # Copied into the average in place: it stays on the model's device (a collective such as NCCL's
            # broadcast takes device tensors only) and the cached lists stay valid.
            for key, value in saved.items():
                self.shadow[key].copy_(value)
        else:
            self.shadow = saved
