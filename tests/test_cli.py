"""`python -m harness.train` end to end: the run folder, TensorBoard read back by TensorBoard itself,
and a short run on a slice of the real MNIST when ../shared/data is present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, best_pt_test_accuracy, real_data_dir, requires_mnist, write_fake_mnist


def train(*args: str, data_root: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_root)}
    return subprocess.run([sys.executable, "-m", "harness.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def only_run_dir(root: Path) -> Path:
    runs = [p for p in root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def read_tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_run_folder_and_tensorboard_on_fake_mnist(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    result = train("recipes/mnist_mlp.yaml", "trainer.epochs=3", "data.val_size=100", "data.batch_size=50",
                   f"logging.root={tmp_path / 'runs'}", data_root=tmp_path / "data")
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert run_dir.parent.name == "mnist_mlp"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "history.jsonl", "summary.json", "checkpoints"}
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.pt", "best.pt"}

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["epochs"] == 3 and config["data"]["val_size"] == 100  # overrides resolved

    lines = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [line.get("epoch") for line in lines] == [1, 2, 3, None]  # 3 epochs, then the test scalars
    assert "test/acc" in lines[-1]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["device"] == "cpu"
    assert summary["tested_weights"].startswith("best.pt")
    correct, total = best_pt_test_accuracy(run_dir, tmp_path / "data")
    assert total == 100 and summary["test"]["acc"] == pytest.approx(correct / total, abs=1e-6)
    assert summary["versions"]["torch"]

    scalars = read_tensorboard(run_dir)
    for tag in ("train/loss", "val/loss", "val/acc", "val/f1", "lr", "epoch_seconds", "samples_per_s"):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3], tag
    assert scalars["val/acc"][-1][1] == pytest.approx(lines[2]["val/acc"])
    assert [step for step, _ in scalars["test/acc"]] == [3]


def test_fast_dev_run_writes_nothing(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    result = train("recipes/mnist.yaml", "trainer.fast_dev_run=true", "data.val_size=100",
                   f"logging.root={tmp_path / 'runs'}", data_root=tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert "test: loss" in result.stdout
    assert not (tmp_path / "runs").exists()


@requires_mnist
def test_mnist_recipe_end_to_end_on_a_slice_of_real_mnist(tmp_path: Path) -> None:
    """The shipped recipe, unchanged but for a budget: 2 epochs of 60 batches on the real data."""
    result = train("recipes/mnist.yaml", "trainer.epochs=2", "trainer.limit_train_batches=60",
                   "data.val_size=2000", f"logging.root={tmp_path / 'runs'}", data_root=real_data_dir())
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["acc"] > 0.93  # 15k images seen; chance is 0.10
    assert summary["final"]["val/acc"] > 0.93
    assert summary["tested_weights"].startswith("best.pt")
    assert len(read_tensorboard(run_dir)["val/acc"]) == 2
