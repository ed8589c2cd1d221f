"""The checkpoint protocol under SIGKILL: a run killed at each named point of an epoch's end
(harness.core.faults: a checkpoint's temporary file written, its rename, best.pt written before
last.pt, the history line, the TensorBoard flush) and then resumed ends with the same last.pt,
best.pt, history.jsonl, TensorBoard steps and summary.json as a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_fake_mnist
from hang_guard import HANG_GUARD_S
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.core.checkpoint import read_checkpoint
from harness.core.faults import POINTS

TIMING = {"epoch_seconds", "samples_per_s"}
# Both epochs improve val/loss on the same two fixed batches, so each writes best.pt too: an epoch's
# end is best.pt (temp, rename), then its copy to last.pt (temp, rename).
ARGS = ["trainer.epochs=2", "trainer.overfit_batches=2", "trainer.monitor=val/loss", "trainer.mode=min",
        "data.batch_size=16", "data.val_size=16", "trainer.progress=false", "trainer.device=cpu"]
# Atomic saves, in order: config.yaml, then per epoch best.pt and its copy to last.pt.
KILLS = [  # (point, n-th arrival): all in epoch 2, after epoch 1's files exist
    ("save:temp-written", 4),  # epoch 2's best.pt, not yet renamed
    ("save:renamed", 4),  # epoch 2's best.pt in place, last.pt still epoch 1's
    ("best:written", 2),  # the same instant, named by the callback
    ("save:temp-written", 5),  # epoch 2's last.pt copy, not yet renamed
    ("history:written", 2),  # epoch 2 logged, nothing saved
    ("tensorboard:flushed", 2),  # epoch 2's scalars flushed, nothing saved
]


def train(root: Path, data: Path, *extra: str, kill: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    env.pop("HARNESS_KILL_AT", None)
    if kill is not None:
        env["HARNESS_KILL_AT"] = kill
    cmd = [sys.executable, "-m", "harness.train", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def outcome(run: Path) -> dict:
    """Everything a finished run leaves, minus wall-clock times."""
    last, best = read_checkpoint(run / "checkpoints" / "last.pt"), read_checkpoint(run / "checkpoints" / "best.pt")
    history = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run / "history.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    events = EventAccumulator(str(run)).Reload()
    return {
        "last": (last["epoch"], last["model"]), "best": (best["epoch"], best["model"]),
        "callbacks": last["callbacks"], "history": history,
        "steps": {tag: [e.step for e in events.Scalars(tag)] for tag in ("train/loss", "val/loss", "test/acc")},
        "summary": {k: summary[k] for k in ("best_epoch", "best_value", "epochs_run", "test", "tested_weights")},
    }


def assert_same(a: dict, b: dict) -> None:
    for key in ("last", "best"):
        assert a[key][0] == b[key][0], key
        for name, tensor in a[key][1].items():
            assert torch.equal(tensor, b[key][1][name]), f"{key}: {name}"
    assert a["callbacks"] == b["callbacks"]
    assert a["history"] == b["history"]
    assert a["steps"] == b["steps"]
    assert a["summary"] == b["summary"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fake_mnist(root, n_train=200, n_test=40)
    return root


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data: Path) -> dict:
    runs = tmp_path_factory.mktemp("straight")
    done = train(runs, data, "recipes/mnist_mlp.yaml", *ARGS, f"logging.root={runs}")
    assert done.returncode == 0, done.stderr[-2000:]
    [run] = [p for p in runs.glob("*/*") if p.is_dir()]
    result = outcome(run)
    # epoch 2 is the last and the best: a kill in it that loses best.pt cannot be mended by a later epoch
    assert result["best"][0] == 2 and [h.get("epoch") for h in result["history"]] == [1, 2, None]
    return result


def test_every_kill_point_is_known() -> None:
    assert {point for point, _ in KILLS} == set(POINTS)


@pytest.mark.parametrize(("point", "arrival"), KILLS, ids=[f"{p}-{n}" for p, n in KILLS])
def test_a_run_killed_at_an_epoch_end_resumes_to_the_same_files(tmp_path: Path, data: Path, straight: dict,
                                                               point: str, arrival: int) -> None:
    killed = train(tmp_path, data, "recipes/mnist_mlp.yaml", *ARGS, f"logging.root={tmp_path}",
                   kill=f"{point}:{arrival}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    [run] = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    resumed = train(tmp_path, data, str(run / "config.yaml"), "--resume", str(run / "checkpoints" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p for p in tmp_path.glob("*/*") if p.is_dir()] == [run]  # resumed in place
    assert_same(outcome(run), straight)
