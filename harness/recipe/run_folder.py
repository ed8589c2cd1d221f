"""The run folder: the one owner of its layout, its creation and the files that describe it.

    <logging.root>/<name>[-<command>]/<timestamp>/
        config.yaml          the resolved recipe (file + overrides + defaults), written atomically
        history.jsonl        one JSON object per epoch (the Trainer's JsonlLogger)
        summary.json         what the command found, written atomically at the end
        events.out.tfevents.*   TensorBoard
        checkpoints/last.pt, checkpoints/best.pt   (ModelCheckpoint names them)
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.core.callbacks import ModelCheckpoint
from harness.core.checkpoint import atomic_save
from harness.recipe.schema import Recipe, dump_yaml

CONFIG = "config.yaml"
SUMMARY = "summary.json"
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"


def run_name(recipe: Recipe, recipe_path: str | Path | None) -> str:
    """`logging.name`, else the recipe file's stem, else "run"."""
    return recipe.logging.name or (Path(recipe_path).stem if recipe_path else "run")


def new_run_folder(parent: str | Path) -> Path:
    """Create and return <parent>/<timestamp>/ (`-2`, `-3`, ... when that second is taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(parent) / stamp
    suffix = 1
    while folder.exists():  # two runs started in the same second get their own folders
        suffix += 1
        folder = Path(parent) / f"{stamp}-{suffix}"
    folder.mkdir(parents=True)
    return folder


def command_folder(recipe: Recipe, recipe_path: str | Path | None, command: str | None = None) -> Path:
    """A new run folder for a recipe: <logging.root>/<name>[-<command>]/<timestamp>/."""
    name = run_name(recipe, recipe_path) + (f"-{command}" if command else "")
    return new_run_folder(Path(recipe.logging.root) / name)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def last_checkpoint(run_dir: Path) -> Path:
    return ModelCheckpoint(checkpoint_dir(run_dir), monitor=None).last_path


def best_checkpoint(run_dir: Path) -> Path:
    return ModelCheckpoint(checkpoint_dir(run_dir), monitor=None).best_path


def write_config(run_dir: Path, recipe: Recipe) -> Path:
    """The resolved recipe as `config.yaml`, written atomically (a resume rewrites it)."""
    path = run_dir / CONFIG
    atomic_save(dump_yaml(recipe).encode(), path, raw=True)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """A JSON report, written atomically."""
    atomic_save(json.dumps(data, indent=2).encode(), path, raw=True)
    return path


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    return write_json(run_dir / SUMMARY, summary)


def results_folder(checkpoint: str | Path) -> Path:
    """Where the results of scoring a checkpoint go: `<run>/` for `<run>/checkpoints/x.pt`, else its folder."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == CHECKPOINTS else folder
