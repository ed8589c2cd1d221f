"""Checkpoint files: written atomically, read back with one clear error for anything that is not ours.

File I/O only. What goes into a checkpoint is the Trainer's business (`Trainer.save_checkpoint`:
its `state_dict()` plus the RNG states and whatever `extra` the caller adds; the recipe layer adds
the resolved recipe); this module knows neither the Trainer nor its callbacks.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch

from harness.core import faults
from harness.errors import HarnessError

FORMAT = "harness-checkpoint-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "epoch", "global_step", "history", "rng")


def atomic_save(obj: Any, path: str | Path, raw: bool = False) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a crash at any
    instant leaves either the old file or the new one, never a truncated one.

    The file gets the permissions of any other new file (0o666 less the umask), not tempfile's 0o600:
    teammates who can read the run folder can read its checkpoints and reports."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
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


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty `.<name>.<random>.tmp` beside `path`, opened for writing. os.open's mode is masked
    by the umask (and a default ACL) as for any new file; O_EXCL never reuses someone else's file."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # 48 random bits taken already: draw again
            continue


def temporary_beside(path: str | Path) -> Path:
    """A new, empty `.<name>.<random>.tmp` in `path`'s folder, for a writer that takes a file name
    (torch.onnx.export, torch.jit.save); `publish` then puts it in place. Same folder: the rename is atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    os.close(fd)
    return tmp


def publish(tmp: str | Path, path: str | Path) -> None:
    """Put a finished temporary file (`temporary_beside`) in place at `path`: fsync, rename, fsync the
    folder; as with `atomic_save`, `path` is the old file or the new one at any instant."""
    tmp, path = Path(tmp), Path(path)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    """Copy a file with the same all-or-nothing guarantee as `atomic_save`."""
    atomic_save(Path(source).read_bytes(), destination, raw=True)


def load_file(path: Path, where: str, as_what: str = "") -> Any:
    """torch.load on the CPU with weights_only (no code runs); an unreadable file is one HarnessError
    line: `<where>: cannot be read<as_what> (<reason>)`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled code objects...
        raise HarnessError(f"{where}: cannot be read{as_what} ({_unreadable_reason(e)})") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The lines of torch's weights_only error that explain torch's options rather than what is in the file.
_TORCH_ADVICE = ("Weights only load failed", "(1)", "(2)", "Please file an issue", "Check the documentation")


def _unreadable_reason(error: Exception) -> str:
    """What is wrong with a file torch.load refused, in one line: the first sentence that names it.

    A weights_only refusal is stated as what it is (the unsupported global or opcode). Its advice to
    pass weights_only=False is left out: the harness never loads pickled code, whoever made the file."""
    text = _ANSI.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        causes = [line.removeprefix("WeightsUnpickler error:").strip() for line in lines
                  if not line.startswith(_TORCH_ADVICE)]
        cause = _first_sentence(next((c for c in causes if c), "")) or "it holds more than tensors and plain data"
        return f"{cause}; the harness loads only tensors and plain data, never pickled code"
    first = _first_sentence(lines[0]) if lines else ""
    if not re.search("[A-Za-z]", first):  # e.g. KeyError: 101 from bytes that are no torch.save file
        return f"not a file torch.save wrote: {type(error).__name__}{f' {first}' if first else ''}"
    return first


def _first_sentence(line: str) -> str:
    return line.split(". ", 1)[0].rstrip(".").strip()


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
    check_model_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()},
                       {k: tuple(v.shape) for k, v in state.items()}, source)


def check_model_shapes(own: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise one line naming the keys and shapes that differ between a model's tensors and a saved
    checkpoint's, both given as {name: shape}."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k} {saved[k]} vs {v}" for k, v in own.items() if k in saved and saved[k] != v]
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
