"""The Trainer on small synthetic data: it learns, it calls the steps and hooks a subclass overrides,
it does not sync with the host per step, and any duck-typed metric plugs in."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from harness import Trainer
from harness.metrics import Accuracy, ConfusionMatrix, F1Score


def blobs(n: int = 2000, classes: int = 4, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters: a problem an MLP solves well above chance in a couple of epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def mlp(dim: int = 16, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)  # the same initial weights whatever ran before
    return nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, classes))


def make_trainer(model: nn.Module, **kwargs) -> Trainer:
    torch.manual_seed(0)
    metrics = {"acc": Accuracy(num_classes=4), "f1": F1Score(num_classes=4, average="macro")}
    return Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss(), metrics,
                   device="cpu", progress=False, **kwargs)


def test_training_learns_far_above_chance() -> None:
    torch.manual_seed(0)
    x, y = blobs()
    train, val = batches(x[:1500], y[:1500]), batches(x[1500:], y[1500:], 256)
    trainer = make_trainer(mlp())
    before = trainer.validate(val)
    history = trainer.fit(train, val, epochs=3)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train/loss"] < 0.5 * history[0]["train/loss"]
    assert history[-1]["val/loss"] < before["val/loss"]
    assert history[-1]["val/acc"] > 0.9 > before["val/acc"]  # chance is 0.25
    logged = {"epoch", "train/loss", "val/loss", "val/acc", "val/f1", "lr", "epoch_seconds", "samples_per_s"}
    assert set(history[0]) >= logged
    assert all(isinstance(v, (int, float)) for h in history for v in h.values())
    scores = trainer.evaluate(val)
    assert set(scores) == {"loss", "acc", "f1"}
    # Against the trained model's outputs, computed here without the Trainer's loop or metrics.
    from sklearn.metrics import f1_score

    with torch.no_grad():
        logits = trainer.model.eval()(x[1500:])
    predicted = logits.argmax(1)
    assert round(scores["acc"] * 500) == int((predicted == y[1500:]).sum())
    assert scores["f1"] == pytest.approx(f1_score(y[1500:], predicted, average="macro"), rel=1e-6)
    assert scores["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y[1500:])), rel=1e-5)


def test_validation_is_no_grad_in_eval_mode_and_restores_train_mode() -> None:
    seen = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return self.net(x)

    x, y = blobs(256)
    trainer = make_trainer(Spy())
    trainer.fit(batches(x, y), batches(x, y, 128), epochs=1)
    assert seen[0] == (True, True)  # training
    assert seen[-1] == (False, False)  # validation
    assert trainer.model.training


def test_no_host_sync_per_step_outside_the_refresh_interval(monkeypatch) -> None:
    x, y = blobs(64 * 20)
    model = mlp()
    # SGD: Adam reads its step counter with .item(), a CPU tensor even on CUDA (no device sync).
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                      device="cpu", progress=False, log_every_n_steps=5)
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    trainer.train_epoch(batches(x, y))
    assert len(calls) == 20 // 5  # one read per refresh, none per step
    calls.clear()
    trainer.log_every_n_steps = 1000
    trainer.train_epoch(batches(x, y))
    assert calls == []


def test_subclass_changes_the_step_dict_batches_and_label_smoothing() -> None:
    """The README's subclass: dict-shaped batches and label smoothing computed in the step."""

    class DictBatchTrainer(Trainer):
        def training_step(self, batch):
            logits = self.model(batch["features"])
            return nn.functional.cross_entropy(logits, batch["label"], label_smoothing=0.1)

        def validation_step(self, batch):
            logits = self.model(batch["features"])
            return nn.functional.cross_entropy(logits, batch["label"]), logits, batch["label"]

    events = []

    class Recording(DictBatchTrainer):
        def on_epoch_start(self, epoch: int) -> None:
            events.append(("start", epoch))

        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            events.append(("end", epoch, round(logs["val/acc"], 4)))

    x, y = blobs()
    data = [{"features": xb, "label": yb} for xb, yb in batches(x, y)]
    torch.manual_seed(0)
    model = mlp()
    trainer = Recording(model, torch.optim.AdamW(model.parameters(), lr=1e-2), loss_fn=None,
                        metrics={"acc": Accuracy(num_classes=4)}, device="cpu", progress=False)
    history = trainer.fit(data[:24], data[24:], epochs=2)
    assert [e[:2] for e in events] == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert history[-1]["val/acc"] > 0.9
    # With smoothing 0.1 over 4 classes the optimal loss is bounded away from 0: the step really used it.
    assert history[-1]["train/loss"] > 0.1


def test_should_stop_from_a_hook_ends_fit() -> None:
    class StopAfterTwo(Trainer):
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            self.should_stop = epoch == 2

    x, y = blobs(256)
    model = mlp()
    trainer = StopAfterTwo(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                           device="cpu", progress=False)
    assert len(trainer.fit(batches(x, y), epochs=10)) == 2


def test_duck_typed_metric_plugs_in_without_adapters() -> None:
    """Anything with update/compute/reset/to fits the slot (a torchmetrics metric does)."""

    class ErrorCount:
        def __init__(self) -> None:
            self.errors = torch.zeros((), dtype=torch.long)

        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            self.errors += (preds.argmax(1) != target).sum()

        def compute(self) -> torch.Tensor:
            return self.errors

        def reset(self) -> None:
            self.errors = torch.zeros((), dtype=torch.long)

        def to(self, device):
            self.errors = self.errors.to(device)
            return self

    x, y = blobs(512)
    model = mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                      {"errors": ErrorCount(), "acc": Accuracy(num_classes=4), "cm": ConfusionMatrix(num_classes=4)},
                      device="cpu", progress=False)
    scores = trainer.evaluate(batches(x, y))
    assert scores["errors"] == round((1 - scores["acc"]) * 512)
    cm = torch.tensor(scores["cm"])
    assert cm.sum() == 512 and int(cm.trace()) == 512 - scores["errors"]


def test_torchmetrics_objects_plug_in_unchanged() -> None:
    """README: a torchmetrics metric fits the metrics slot as it is, and gives the harness metrics' values."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    x, y = blobs(700)
    model = mlp()
    metrics = {"acc": Accuracy(num_classes=4), "f1": F1Score(num_classes=4, average="macro"),
               "tm_acc": MulticlassAccuracy(num_classes=4, average="micro"),
               "tm_f1": MulticlassF1Score(num_classes=4, average="macro")}
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(), metrics,
                      device="cpu", progress=False)
    untrained = trainer.validate(batches(x[500:], y[500:], 48))  # mistakes: F1 differs from accuracy
    assert untrained["val/acc"] < 0.9 and untrained["val/f1"] != pytest.approx(untrained["val/acc"], abs=1e-3)
    history = trainer.fit(batches(x[:500], y[:500]), batches(x[500:], y[500:], 48), epochs=2)
    scores = trainer.evaluate(batches(x[500:], y[500:], 64))
    for logs in [untrained, *history, {f"val/{k}": v for k, v in scores.items()}]:
        assert isinstance(logs["val/tm_acc"], float) and isinstance(logs["val/tm_f1"], float)
        assert logs["val/tm_acc"] == pytest.approx(logs["val/acc"], abs=1e-6)
        assert logs["val/tm_f1"] == pytest.approx(logs["val/f1"], abs=1e-6)


def test_device_auto_is_cpu_here_and_cuda_request_fails_clearly() -> None:
    import pytest

    from harness.core.device import resolve_device
    from harness.errors import HarnessError

    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(HarnessError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(HarnessError, match="allowed: auto, cpu"):
        resolve_device("tpu:0")


def test_a_non_finite_validation_loss_warns_once_per_pass_and_is_logged_as_null(tmp_path: Path, capsys) -> None:
    x, y = blobs(n=400)
    val_x = x[300:].clone()
    val_x[5, 3] = math.nan  # one bad pixel in the validation inputs
    trainer = make_trainer(mlp(), log_dir=tmp_path)
    history = trainer.fit(batches(x[:300], y[:300]), batches(val_x, y[300:]), epochs=2)
    trainer.evaluate(batches(x[300:], y[300:]))  # a finite test pass: no warning
    trainer.close()
    assert [math.isnan(h["val/loss"]) for h in history] == [True, True]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == ["warning: val/loss is nan: a NaN or infinity in the inputs or the model's outputs "
                        "(the JSON files record it as null)"] * 2
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [line.get("val/loss", "absent") for line in lines] == [None, None, "absent"]
    assert math.isfinite(lines[-1]["test/loss"])
    assert "NaN" not in (tmp_path / "history.jsonl").read_text()


def test_compile_makes_one_graph_for_training_and_one_for_validation(monkeypatch) -> None:
    """The batch dimension is marked dynamic: the short last batch (8 after 16, 16) and the validation
    batches of other sizes reuse their graphs instead of recompiling. Dynamo's eager backend: what is
    counted is Dynamo's graphs, not what Inductor makes of them."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager", **kw))
    torch._dynamo.reset()
    x, y = blobs(40, dim=6)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.1), nn.Linear(8, 4))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu",
                      compile=True, progress=False, loggers=[])
    before = counters["stats"]["unique_graphs"]
    trainer.fit(batches(x, y, 16), batches(x, y, 24), epochs=2)
    assert counters["stats"]["unique_graphs"] - before == 2


def test_metrics_get_float32_predictions_under_bf16() -> None:
    """bf16 logits would tie in argmax and round in scores: the metrics see them cast to float32."""
    seen = []

    class Recording(Accuracy):
        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            seen.append(preds.dtype)
            super().update(preds, target)

    x, y = blobs(64)
    trainer = Trainer(mlp(), None, nn.CrossEntropyLoss(), {"acc": Recording(4)}, device="cpu", precision="bf16",
                      progress=False, loggers=[])
    trainer.validate(batches(x, y, 32))
    assert seen == [torch.float32, torch.float32]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = trainer.model(x)
    assert logits.dtype == torch.bfloat16  # what the model gives under autocast
