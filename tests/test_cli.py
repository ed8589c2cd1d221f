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
from hang_guard import HANG_GUARD_S


def train(*args: str, data_root: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_root)}
    return subprocess.run([sys.executable, "-m", "harness.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


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


def test_tensorboard_reads_like_a_dashboard(tmp_path: Path) -> None:
    """Read back by TensorBoard's own EventAccumulator: no `epoch` scalar, the custom-scalars layout (train and
    val loss on one chart, each val metric, lr, throughput), the resolved recipe as text, an HParams row."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    from harness.train import main

    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    assert main(["recipes/mnist_mlp.yaml", "trainer.epochs=2", "data.val_size=100", "data.batch_size=50",
                 f"data.root={tmp_path / 'data'}", "trainer.progress=false", "trainer.device=cpu",
                 f"logging.root={tmp_path / 'runs'}"]) == 0
    run_dir = only_run_dir(tmp_path / "runs")
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "epoch" not in scalars and {"train/loss", "val/loss", "lr", "lr_end", "samples_per_s"} <= set(scalars)

    [config] = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["loss"] == ["^train/loss$", "^val/loss$"]
    assert charts["val/acc"] == ["^val/acc$"] and charts["val/f1"] == ["^val/f1$"]
    assert any(tags == ["^lr$", "^lr_end$"] for tags in charts.values())
    assert any(tags == ["^samples_per_s$"] for tags in charts.values())

    [text] = events.Tensors("recipe/text_summary")
    recipe_text = text.tensor_proto.string_val[0].decode()
    assert "    optim:\n      name: adamw\n" in recipe_text and "epochs: 2" in recipe_text

    hparams = {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
               for tag, content in events.PluginTagToContent("hparams").items()}
    experiment = hparams["_hparams_/experiment"].experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/loss", "val/acc", "val/f1",
                                                            "test/loss", "test/acc", "test/f1"]
    row = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert row["trainer.epochs"].number_value == 2 and row["data.val_size"].number_value == 100
    assert row["model.name"].string_value == "mlp"
    assert "trainer.seed" not in row  # at its default: not what sets this run apart
    # The metric values the HParams tab shows are the run's own last scalars of those tags.
    assert [e.step for e in events.Scalars("test/acc")] == [2]


def test_no_validation_data_watches_the_training_loss_with_one_note(tmp_path: Path, capsys, one_thread) -> None:
    import torch

    from harness.train import main

    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    code = main(["recipes/mnist_mlp.yaml", "trainer.epochs=2", "data.val_size=0", "data.batch_size=50",
                 "trainer.early_stopping={patience: 5}", "trainer.threads=2",
                 f"data.root={tmp_path / 'data'}", "trainer.progress=false", "trainer.device=cpu",
                 f"logging.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "train/loss (min) instead of trainer.monitor=val/acc" in notes[0], err
    assert torch.get_num_threads() == 2  # trainer.threads (the fixture had set 1)
    run_dir = only_run_dir(tmp_path / "runs")
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = [h["train/loss"] for h in read_history(run_dir)]
    assert summary["monitor"] == "train/loss" and summary["best_value"] == min(losses)
    assert summary["tested_weights"] == f"best.pt, epoch {losses.index(min(losses)) + 1}"


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()
            if json.loads(line).get("epoch") is not None]
