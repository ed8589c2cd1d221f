"""Checkpoints: written atomically, read back with one clear error for anything that is not ours.

A checkpoint is `Trainer.state_dict()` (model, optimizer, scheduler, AMP scaler, epoch, global step,
position in the epoch, history, callback states) plus the RNG states, the data-order state and
whatever `extra` the caller adds (the CLI adds the resolved recipe).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.callbacks import callback_key
from harness.errors import HarnessError
from harness.seed import get_rng_state, set_rng_state

if TYPE_CHECKING:
    from harness.trainer import Trainer

FORMAT = "harness-checkpoint-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "epoch", "global_step", "history", "rng")


def atomic_save(obj: Any, path: str | Path, raw: bool = False) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a crash at any
    instant leaves either the old file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if raw:
                f.write(obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    """Copy a file with the same all-or-nothing guarantee as `atomic_save`."""
    atomic_save(Path(source).read_bytes(), destination, raw=True)


def save_checkpoint(trainer: Trainer, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    state = trainer.state_dict()
    state.update(format=FORMAT, rng=get_rng_state(), extra=extra or {})
    atomic_save(state, path)
    return Path(path)


def load_file(path: Path, where: str, as_what: str = "") -> Any:
    """torch.load on the CPU with weights_only (no code runs); an unreadable file is one HarnessError
    line: `<where>: cannot be read<as_what> (<reason>)`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled code objects...
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise HarnessError(f"{where}: cannot be read{as_what} ({reason})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint file; HarnessError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint not found: {path}")
    state = load_file(path, str(path), " as a checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise HarnessError(f"{path}: not a harness checkpoint (expected keys {list(REQUIRED_KEYS)}, found {found})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise HarnessError(f"{path}: checkpoint is missing {missing}")
    return state


def check_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise one line naming the keys and shapes that differ between a model and a saved state."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model) {_few(shapes)}")
        raise HarnessError(f"{source}: checkpoint does not fit this model: {'; '.join(parts)}")


def load_checkpoint(trainer: Trainer, path: str | Path) -> dict[str, Any]:
    """Restore a Trainer (and the global RNGs) from `path` for an exact resume; returns the raw state."""
    from harness.trainer import unwrap_model

    state = read_checkpoint(path)
    model = unwrap_model(trainer.model)
    check_model_state(model, state["model"], str(path))
    model.load_state_dict(state["model"])
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise HarnessError(f"{path}: optimizer state does not fit this optimizer ({e})") from None
    for name in ("scheduler", "scaler"):
        obj, saved = getattr(trainer, name), state.get(name)
        if obj is not None and saved is None:
            raise HarnessError(f"{path}: the run uses a {name} but the checkpoint has none")
        if obj is not None:
            obj.load_state_dict(saved)
    trainer.epoch = state["epoch"]
    trainer.global_step = state["global_step"]
    trainer.batch_in_epoch = state.get("batch_in_epoch", 0)
    trainer.partial_epoch = dict(state.get("partial_epoch") or {"loss_sum": 0.0, "samples": 0})
    trainer.history = list(state["history"])
    saved_callbacks = state.get("callbacks", {})
    for i, callback in enumerate(trainer.callbacks):
        key = callback_key(callback, i)
        if key in saved_callbacks:
            callback.load_state_dict(saved_callbacks[key])
    set_rng_state(state["rng"])
    return state


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
