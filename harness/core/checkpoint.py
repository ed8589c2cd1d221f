"""Checkpoint files: written atomically, read back with one clear error for anything that is not ours.

File I/O only. What goes into a checkpoint is the Trainer's business (`Trainer.save_checkpoint`:
its `state_dict()` plus the RNG states and whatever `extra` the caller adds; the recipe layer adds
the resolved recipe); this module knows neither the Trainer nor its callbacks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.core import faults
from harness.errors import HarnessError

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
        faults.reached("save:temp-written")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    faults.reached("save:renamed")


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    """Copy a file with the same all-or-nothing guarantee as `atomic_save`."""
    atomic_save(Path(source).read_bytes(), destination, raw=True)


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


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
