"""A run folder from Python without a recipe (harness.core.run): the same files, and summary.json with the same
keys, as the training command makes; the best checkpoint tested, checked here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_fake_mnist
from torch import nn

from harness import EarlyStopping, ModelCheckpoint, Trainer, fit_and_test, new_run_folder
from harness.core.checkpoint import read_checkpoint
from harness.errors import HarnessError
from harness.metrics import Accuracy, F1Score
from harness.stats import wilson_interval

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three overlapping classes of 2-D points, in batches of 50: a wide net overfits 200 of them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.75, 1.3]])[y] + torch.randn(n, 2, generator=g)
    return list(zip(x.split(50), y.split(50), strict=True))


def python_run(root: Path, epochs: int = 12, checkpoints: bool = True) -> tuple[Trainer, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 3))
    run_dir = new_run_folder(root / "blobs")
    callbacks = [ModelCheckpoint(run_dir / "checkpoints", monitor="val/loss", mode="min")] if checkpoints else []
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=3e-2), nn.CrossEntropyLoss(),
                      {"acc": Accuracy(num_classes=3), "f1": F1Score(num_classes=3, average="macro")},
                      callbacks=callbacks, log_dir=run_dir, device="cpu", progress=False)
    return trainer, fit_and_test(trainer, blobs(200, 0), blobs(500, 1), blobs(500, 2), epochs=epochs)


def test_fit_and_test_tests_the_best_checkpoint_and_writes_the_summary(tmp_path: Path) -> None:
    _, summary = python_run(tmp_path / "runs")
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path / "runs" / "blobs"
    assert {p.name for p in run_dir.iterdir()} >= {"history.jsonl", "summary.json", "checkpoints"}
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))

    # The best epoch by val/loss, read from history.jsonl, is the one best.pt holds and the one tested.
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in history if "epoch" in h]
    best = min(epochs, key=lambda h: h["val/loss"])
    assert best["epoch"] < len(epochs)  # the data is made to overfit: the last epoch is not the best
    assert (summary["monitor"], summary["best_epoch"], summary["best_value"]) == ("val/loss", best["epoch"],
                                                                                  best["val/loss"])
    state = read_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert state["epoch"] == best["epoch"] and summary["tested_weights"] == f"best.pt, epoch {best['epoch']}"

    # The test figures, recomputed by hand from best.pt's weights: argmax accuracy and the mean loss.
    model = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 3))
    model.load_state_dict(state["model"])
    x = torch.cat([xb for xb, _ in blobs(500, 2)])
    y = torch.cat([yb for _, yb in blobs(500, 2)])
    with torch.no_grad():
        logits = model(x)
    correct = int((logits.argmax(1) == y).sum())
    assert summary["test"]["acc"] == pytest.approx(correct / 500, abs=1e-9)
    assert summary["test"]["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert summary["test_samples"] == 500 and summary["test_covers"] == "500 samples: the whole test split"
    assert summary["test_intervals"] == {"acc": pytest.approx(list(wilson_interval(correct, 500)))}
    assert history[-1] == {"step": len(epochs), **{f"test/{k}": v for k, v in summary["test"].items()}}
    assert summary["epochs_run"] == len(epochs) == 12 and summary["final"]["epoch"] == 12


def test_the_python_run_folder_matches_the_training_commands(tmp_path: Path) -> None:
    """Same summary keys (the command adds only the recipe it read) and the same TensorBoard layout."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    from harness.train import main

    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    assert main(["recipes/mnist_mlp.yaml", "trainer.epochs=1", "data.val_size=100", "data.batch_size=50",
                 f"data.root={tmp_path / 'data'}", "trainer.progress=false", "trainer.device=cpu",
                 f"logging.root={tmp_path / 'cli'}"]) == 0
    [cli_dir] = (tmp_path / "cli").glob("*/*")
    _, summary = python_run(tmp_path / "runs", epochs=2)
    python_dir = Path(summary["run_dir"])
    cli_summary = json.loads((cli_dir / "summary.json").read_text())
    assert list(cli_summary) == ["recipe", *summary]
    def files(run_dir: Path) -> set[str]:  # an event file's name holds its time and process: "events" here
        return {"events" if p.name.startswith("events.out.tfevents.") else p.name for p in run_dir.iterdir()}

    assert files(cli_dir) - files(python_dir) == {"config.yaml"} and "events" in files(python_dir)
    assert {p.name for p in (python_dir / "checkpoints").iterdir()} == {"last.pt", "best.pt"}

    def charts(run_dir: Path) -> dict[str, list[str]]:
        events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
        events.Reload()
        [config] = events.Tensors("custom_scalars__config__")
        layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
        return {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}

    assert charts(python_dir) == charts(cli_dir)  # both log val/acc and val/f1
    assert charts(python_dir)["loss"] == ["^train/loss$", "^val/loss$"]


def test_without_a_checkpoint_callback_the_final_weights_are_tested(tmp_path: Path) -> None:
    trainer, summary = python_run(tmp_path / "runs", epochs=2, checkpoints=False)
    assert summary["tested_weights"] == "final weights, epoch 2"
    assert (summary["monitor"], summary["best_epoch"]) == (None, None)
    assert not (Path(summary["run_dir"]) / "checkpoints").exists()
    assert summary["test"] == pytest.approx({k.removeprefix("test/"): v for k, v in trainer.validate(blobs(500, 2),
                                                                                                     "test").items()})


def test_early_stopping_ends_the_fit_and_the_best_epoch_is_still_tested(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 3))
    run_dir = new_run_folder(tmp_path / "runs")
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=2)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=3e-2), nn.CrossEntropyLoss(),
                      callbacks=[ModelCheckpoint(run_dir / "checkpoints", monitor="val/loss", mode="min"), stopper],
                      log_dir=run_dir, device="cpu", progress=False)
    summary = fit_and_test(trainer, blobs(200, 0), blobs(500, 1), blobs(500, 2), epochs=50)
    losses = [h["val/loss"] for h in trainer.history]
    best = losses.index(min(losses)) + 1
    assert summary["epochs_run"] == len(losses) == best + 2 < 50  # stopped after two epochs without improvement
    assert f"early stopping at epoch {best + 2}: val/loss has not improved" in capsys.readouterr().err
    assert summary["tested_weights"] == f"best.pt, epoch {best}"


def test_a_run_folder_that_cannot_be_made_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(HarnessError, match=r"^cannot make a run folder in .*file/exp \(") as info:
        new_run_folder(tmp_path / "file" / "exp")
    assert "\n" not in str(info.value) and "logging.root" not in str(info.value)  # no recipe here
