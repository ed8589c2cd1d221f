"""The run folder: the one owner of its layout, its creation and the files that describe it.

    <logging.root>/<name>[-<command>]/<timestamp>/
        config.yaml          the resolved recipe (file + overrides + defaults), written atomically
        history.jsonl        one JSON object per epoch (the Trainer's JsonlLogger)
        summary.json         what the command found, written atomically at the end (its name and the
                             training summary's keys: harness.core.run, shared with the Python API)
        events.out.tfevents.*   TensorBoard
        checkpoints/last.pt, checkpoints/best.pt   (ModelCheckpoint names them; under trainer.strategy=fsdp
                             checkpoints/last and checkpoints/best, links to sharded folders)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.core import run as core_run
from harness.core.callbacks import ModelCheckpoint
from harness.core.checkpoint import atomic_save
from harness.core.loggers import strict_json
from harness.errors import HarnessError
from harness.recipe.schema import Recipe, dump_yaml

CONFIG = "config.yaml"
SUMMARY = core_run.SUMMARY
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"


def run_name(recipe: Recipe, recipe_path: str | Path | None) -> str:
    """`logging.name`, else the recipe file's stem, else "run"."""
    return recipe.logging.name or (Path(recipe_path).stem if recipe_path else "run")


def new_run_folder(parent: str | Path) -> Path:
    """Create and return <parent>/<timestamp>/ (harness.core.run.new_run_folder); a folder that cannot be
    made names logging.root, where the parent comes from."""
    try:
        return core_run.new_run_folder(parent)
    except HarnessError as e:  # check_run_parent catches most of these before any work; this is the backstop
        raise HarnessError(f"logging.root: {e}") from None


def command_parent(recipe: Recipe, recipe_path: str | Path | None, command: str | None = None) -> Path:
    """Where a recipe's run folders go: <logging.root>/<name>[-<command>]/."""
    return Path(recipe.logging.root) / (run_name(recipe, recipe_path) + (f"-{command}" if command else ""))


def command_folder(recipe: Recipe, recipe_path: str | Path | None, command: str | None = None) -> Path:
    """A new run folder for a recipe: <logging.root>/<name>[-<command>]/<timestamp>/."""
    return new_run_folder(command_parent(recipe, recipe_path, command))


def check_run_parent(recipe: Recipe, recipe_path: str | Path | None, command: str | None = None) -> None:
    """Fail before any work (no data read, nothing created) when `command_folder` could not make its
    folder: a file in the way of `logging.root`, or a folder this process may not write to."""
    root = recipe.logging.root
    existing = command_parent(recipe, recipe_path, command)
    try:
        while not existing.exists():  # the nearest existing folder: where mkdir would start creating
            existing = existing.parent
    except OSError as e:
        raise HarnessError(f"logging.root={root!r}: cannot look at {existing} ({e.strerror or e})") from None
    if not existing.is_dir():
        raise HarnessError(f"logging.root={root!r}: {existing} is a file, not a folder; "
                           "give logging.root a folder where run folders can be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HarnessError(f"logging.root={root!r}: the folder {existing} is not writable; "
                           "give logging.root a folder you can write to")


def nearest_existing(folder: Path) -> Path:
    """`folder` itself when it exists, else its nearest existing ancestor: where mkdir would start."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def remove_empty_folders(folder: Path, stop_at: Path) -> None:
    """Remove `folder` and then each parent while it is empty, up to (not including) `stop_at`."""
    stop = stop_at.resolve()
    folder = folder.resolve()
    while folder != stop and stop in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def last_checkpoint(run_dir: Path, sharded: bool | None = None) -> Path:
    """`checkpoints/last.pt`, or the sharded `checkpoints/last`; None: the sharded one when it exists."""
    return _checkpoint(run_dir, sharded).last_path


def best_checkpoint(run_dir: Path, sharded: bool | None = None) -> Path:
    """`checkpoints/best.pt`, or the sharded `checkpoints/best`; None: the sharded one when it exists."""
    return _checkpoint(run_dir, sharded).best_path


def _checkpoint(run_dir: Path, sharded: bool | None) -> ModelCheckpoint:
    if sharded is None:
        folder = checkpoint_dir(run_dir)
        sharded = (folder / "last").exists() or (folder / "best").exists()
    return ModelCheckpoint(checkpoint_dir(run_dir), monitor=None, sharded=sharded)


def write_config(run_dir: Path, recipe: Recipe) -> Path:
    """The resolved recipe as `config.yaml`, written atomically (a resume rewrites it)."""
    path = run_dir / CONFIG
    atomic_save(dump_yaml(recipe).encode(), path, raw=True)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """A JSON report, written atomically; strict JSON: a NaN or infinity is written as null."""
    atomic_save(strict_json(data, indent=2).encode(), path, raw=True)
    return path


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    return core_run.write_summary(run_dir, summary)


def results_folder(checkpoint: str | Path) -> Path:
    """Where the results of scoring a checkpoint go: `<run>/` for `<run>/checkpoints/x.pt`, else its folder."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == CHECKPOINTS else folder
