"""The run folder: made atomically when runs start at once, refused before any work when `logging.root`
cannot hold it, and its JSON reports are strict JSON that teammates can read."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from hang_guard import HANG_GUARD_S

from harness.errors import HarnessError
from harness.recipe.run_folder import new_run_folder, write_json
from harness.recipe.schema import load_recipe
from harness.workflows.training import train


def _strict(text: str) -> object:
    """json.loads that refuses NaN and Infinity (Python's own parser accepts them)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ concurrent runs
def _make_folders(parent: Path, start: Any, results: Any,
                  calls: int) -> None:
    start.wait()  # every process creates its folders at the same instant
    made, failed = [], []
    for _ in range(calls):
        try:
            made.append(str(new_run_folder(parent)))
        except Exception as e:  # every failure is reported, whatever its type
            failed.append(repr(e))
    results.put((made, failed))


def test_processes_creating_run_folders_at_once_all_get_their_own(tmp_path: Path) -> None:
    processes, calls = 6, 10
    context = multiprocessing.get_context("fork")  # the children only make folders: no threads involved
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_make_folders, args=(tmp_path / "runs" / "mnist", start, results, calls))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=HANG_GUARD_S) for _ in workers]
    for worker in workers:
        worker.join(timeout=HANG_GUARD_S)
    made = [folder for folders, _ in outcomes for folder in folders]
    failed = [error for _, errors in outcomes for error in errors]
    assert failed == []
    assert len(made) == len(set(made)) == processes * calls
    assert sorted(p.name for p in (tmp_path / "runs" / "mnist").iterdir()) == sorted(Path(m).name for m in made)


# ------------------------------------------------------------------ logging.root that cannot hold a run
@pytest.mark.parametrize("command", ["train", "cv", "lr_find"])
def test_a_logging_root_that_is_a_file_fails_before_any_data_is_read(tmp_path: Path, command: str) -> None:
    in_the_way = tmp_path / "runs"
    in_the_way.write_text("a file, not a folder")
    # No data anywhere: a command that read the data first would fail on that instead.
    env = {**os.environ, "HARNESS_DATA_DIR": str(tmp_path / "no-data")}
    result = subprocess.run([sys.executable, "-m", f"harness.{command}", "recipes/mnist_mlp.yaml",
                             "data.download=false", f"logging.root={in_the_way}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (f"error: logging.root={str(in_the_way)!r}: {in_the_way} is a file, not a folder; "
                        "give logging.root a folder where run folders can be made")
    assert in_the_way.read_text() == "a file, not a folder"


def test_an_unwritable_logging_root_fails_before_any_data_is_read(tmp_path: Path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # The test may run as root, whom a chmod does not stop: the permission answer is what is faked.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    recipe = load_recipe(REPO / "recipes" / "mnist_mlp.yaml", [f"data.root={tmp_path / 'no-data'}",
                                                               "data.download=false",
                                                               f"logging.root={locked / 'runs'}"])
    with pytest.raises(HarnessError) as info:
        train(recipe, recipe_path="mnist_mlp.yaml")
    assert str(info.value) == (f"logging.root={str(locked / 'runs')!r}: the folder {locked} is not writable; "
                               "give logging.root a folder you can write to")
    assert list(locked.iterdir()) == []


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(HarnessError) as info:
        new_run_folder(tmp_path / "file" / "mnist")
    assert str(info.value).startswith(f"logging.root: cannot make a run folder in {tmp_path / 'file' / 'mnist'} (")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ the JSON reports
def test_reports_are_strict_json_with_null_for_non_finite_numbers(tmp_path: Path) -> None:
    summary = {"best_value": math.nan, "final": {"val/loss": math.inf, "val/acc": 0.5},
               "per_class": [[1.0, -math.inf], (math.nan, 2)], "epochs_run": 3, "device": "cpu"}
    path = write_json(tmp_path / "summary.json", summary)
    assert _strict(path.read_text()) == {"best_value": None, "final": {"val/loss": None, "val/acc": 0.5},
                                         "per_class": [[1.0, None], [None, 2]], "epochs_run": 3, "device": "cpu"}


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_reports_get_the_permissions_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        path = write_json(tmp_path / "summary.json", {"epochs_run": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
