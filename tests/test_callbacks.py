"""Callbacks on a real Trainer: the event order a user's callback sees, early stopping on scripted
metrics, best.pt only on improvement, EMA against a hand-computed average, monitors checked up front."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from harness import HarnessError, Trainer
from harness.core.callbacks import EMA, Callback, EarlyStopping, ModelCheckpoint
from harness.core.checkpoint import read_checkpoint
from harness.data import TensorLoader
from harness.recipe.build import build_trainer
from harness.recipe.data import Data
from harness.recipe.schema import validate_recipe
from harness.workflows.training import Run

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def batches(n_batches: int = 3, size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, generator=g), torch.randn(size, 2, generator=g)) for _ in range(n_batches)]


def linear_trainer(callbacks: Iterable[Callback] = (), cls: type[Trainer] = Trainer, lr: float = 0.1) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return cls(model, torch.optim.SGD(model.parameters(), lr=lr), nn.MSELoss(), device="cpu", progress=False,
               callbacks=list(callbacks))


class Scripted(Trainer):
    """validate() returns the next of `self.script` ({"val/<name>": value}) instead of computing it."""

    script: ClassVar[list[dict[str, float]]] = []

    def validate(self, data: Iterable[Any], prefix: str = "val") -> dict[str, Any]:
        if prefix != "val":
            return super().validate(data, prefix)
        self._call("on_validation_start")
        results = self.script[self.epoch]
        self._call("on_validation_end", results)
        return dict(results)


def scripted(name: str, values: list[float]) -> type[Scripted]:
    return type("ScriptedRun", (Scripted,), {"script": [{f"val/{name}": v} for v in values]})


# ------------------------------------------------------------------ events
class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.events.append("fit_start")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.events.append(f"epoch_start {epoch}")

    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
        self.events.append(f"train_batch_end {batch_idx}")

    def on_validation_start(self, trainer: Trainer) -> None:
        self.events.append("validation_start")

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.events.append(f"validation_end {sorted(metrics)}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self.events.append(f"epoch_end {epoch} {logs['epoch']}")

    def on_fit_end(self, trainer: Trainer) -> None:
        self.events.append("fit_end")


def test_a_user_callback_sees_the_documented_events_in_order() -> None:
    recorder = Recorder()
    trainer = linear_trainer([recorder])
    trainer.fit(batches(3), batches(2, seed=1), epochs=2)
    epoch = ["train_batch_end 0", "train_batch_end 1", "train_batch_end 2",
             "validation_start", "validation_end ['val/loss']"]
    assert recorder.events == [
        "fit_start",
        "epoch_start 1", *epoch, "epoch_end 1 1",
        "epoch_start 2", *epoch, "epoch_end 2 2",
        "fit_end",
    ]
    trainer.evaluate(batches(1))
    assert recorder.events[-2:] == ["validation_start", "validation_end ['test/loss']"]


def test_the_trainers_own_hooks_run_before_the_callbacks() -> None:
    order: list[str] = []

    class Hooked(Trainer):
        def on_epoch_start(self, epoch: int) -> None:
            order.append("trainer")

    class Second(Callback):
        def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
            order.append("callback")

    linear_trainer([Second()], cls=Hooked).fit(batches(1), epochs=2)
    assert order == ["trainer", "callback"] * 2


# ------------------------------------------------------------------ early stopping
@pytest.mark.parametrize(("mode", "values", "stop_epoch", "best"), [
    # min, min_delta 0.1: only 1.0 -> 0.8 counts (0.95, 0.75 and 0.72 are within 0.1 of the best)
    ("min", [1.0, 0.95, 0.8, 0.75, 0.72, 0.1, 0.1], 5, 0.8),
    # max, min_delta 0.1: 0.5 -> 0.65 -> 0.8; then 0.85 and 0.89 are not enough
    ("max", [0.5, 0.55, 0.65, 0.8, 0.85, 0.89, 0.99], 6, 0.8),
])
def test_early_stopping_stops_at_the_right_epoch(mode: str, values: list[float], stop_epoch: int,
                                                 best: float) -> None:
    stopper = EarlyStopping("val/metric", mode=mode, patience=2, min_delta=0.1)
    trainer = linear_trainer([stopper], cls=scripted("metric", values))
    history = trainer.fit(batches(1), batches(1), epochs=len(values))
    assert stopper.stopped_epoch == stop_epoch
    assert len(history) == trainer.epoch == stop_epoch
    assert stopper.tracker.best == best


def test_early_stopping_without_patience_running_out_trains_every_epoch() -> None:
    stopper = EarlyStopping("val/metric", mode="min", patience=2)
    trainer = linear_trainer([stopper], cls=scripted("metric", [3.0, 2.0, 2.5, 1.0, 1.5]))
    trainer.fit(batches(1), batches(1), epochs=5)
    assert stopper.stopped_epoch is None and trainer.epoch == 5 and stopper.wait == 1


def test_early_stopping_names_a_metric_that_is_not_logged() -> None:
    trainer = linear_trainer([EarlyStopping("val/acc")])
    with pytest.raises(KeyError, match="'val/acc' is not among the logged metrics"):
        trainer.fit(batches(1), batches(1), epochs=1)


# ------------------------------------------------------------------ checkpoints
class BestProbe(Callback):
    """After ModelCheckpoint: which epoch best.pt and last.pt hold at the end of every epoch."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.best: list[int] = []
        self.best_bytes: list[bytes] = []
        self.last: list[int] = []

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self.best.append(read_checkpoint(self.folder / "best.pt")["epoch"])
        self.best_bytes.append((self.folder / "best.pt").read_bytes())
        self.last.append(read_checkpoint(self.folder / "last.pt")["epoch"])


@pytest.mark.parametrize(("mode", "values", "best_epochs"), [
    ("max", [0.5, 0.7, 0.6, 0.8, 0.8], [1, 2, 2, 4, 4]),
    ("min", [0.5, 0.7, 0.4, 0.4, 0.1], [1, 1, 3, 3, 5]),
])
def test_best_pt_is_written_only_when_the_monitor_improves(tmp_path: Path, mode: str, values: list[float],
                                                           best_epochs: list[int]) -> None:
    saver = ModelCheckpoint(tmp_path, monitor="val/acc", mode=mode)
    probe = BestProbe(tmp_path)
    trainer = linear_trainer([saver, probe], cls=scripted("acc", values))
    trainer.fit(batches(1), batches(1), epochs=len(values))
    assert probe.best == best_epochs
    assert probe.last == [1, 2, 3, 4, 5]
    # best.pt's bytes change exactly at the epochs that improved
    rewritten = [a != b for a, b in itertools.pairwise(probe.best_bytes)]
    assert rewritten == [a != b for a, b in itertools.pairwise(best_epochs)]
    assert saver.best_epoch == best_epochs[-1]


def test_a_run_tests_best_pt_but_reports_the_whole_run(fake_data, tmp_path: Path) -> None:
    """best.pt from epoch 1 is tested; the summary still describes all 3 epochs that ran."""
    recipe = validate_recipe({
        "model": {"name": "mlp", "args": {"in_features": 784, "hidden": [16], "num_classes": 10}},
        "data": {"root": str(fake_data.root), "batch_size": 8, "val_size": 8},
        "trainer": {"epochs": 3, "device": "cpu", "progress": False},
        "logging": {"root": str(tmp_path / "runs")},
    })
    summary = Run(recipe, trainer_class=scripted("acc", [0.9, 0.5, 0.4]), verbose=False).execute()
    assert summary["tested_weights"] == "best.pt, epoch 1"
    assert (summary["best_epoch"], summary["best_value"]) == (1, 0.9)
    assert summary["epochs_run"] == 3 and summary["final"]["epoch"] == 3
    lines = [json.loads(line) for line in (Path(summary["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 3]  # the test scalars at the run's last epoch


# ------------------------------------------------------------------ EMA
class WeightsAtValidation(Trainer):
    """Records the weights each validation pass runs with."""

    def validation_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.validated = [p.detach().clone() for p in self.model.parameters()]
        return super().validation_step(batch)


def test_ema_is_validated_and_raw_weights_are_restored(tmp_path: Path) -> None:
    decay, data, epochs = 0.6, batches(5), 2
    # By hand: the same SGD steps, and ema = decay * ema + (1 - decay) * weights after each.
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = [p.detach().clone() for p in model.parameters()]
    ema_after_epoch = []
    for _ in range(epochs):
        for x, y in data:
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            ema = [decay * e + (1 - decay) * p.detach() for e, p in zip(ema, model.parameters(), strict=True)]
        ema_after_epoch.append(copy.deepcopy(ema))

    averager = EMA(decay)
    validated = []

    class Probe(Callback):
        def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
            validated.append(trainer.validated)

    trainer = linear_trainer([averager, Probe()], cls=WeightsAtValidation)
    trainer.fit(data, batches(1, seed=1), epochs=epochs)

    for seen, expected in zip(validated, ema_after_epoch, strict=True):  # validation ran on the average
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(seen, expected, strict=True))
    shadow = [averager.shadow["weight"], averager.shadow["bias"]]
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(shadow, ema, strict=True))
    # ...and training goes on from the raw weights, which differ from the average.
    raw = list(trainer.model.parameters())
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(raw, model.parameters(), strict=True))
    assert not torch.allclose(raw[0], shadow[0])


def test_ema_waits_for_the_optimizer_step_when_accumulating() -> None:
    averager = EMA(0.5)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), device="cpu",
                      progress=False, accumulate_grad_batches=2, callbacks=[averager])
    start = model.weight.detach().clone()
    trainer.fit(batches(2), epochs=1)  # one optimizer step: one EMA update
    assert torch.allclose(averager.shadow["weight"], 0.5 * start + 0.5 * model.weight.detach())


class StateDictEMA(Callback):
    """The average as it was computed before the cached tensor lists: a walk over `state_dict()` after
    every optimizer step, ema = decay * ema + (1 - decay) * value for floats, a copy for integer buffers."""

    def __init__(self, decay: float) -> None:
        self.decay, self.expected, self.seen = decay, {}, 0

    def on_fit_start(self, trainer: Trainer) -> None:
        if not self.expected:
            self.expected = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
        if trainer.global_step == self.seen:
            return
        self.seen = trainer.global_step
        for k, v in trainer.model.state_dict().items():
            floating = v.is_floating_point()
            self.expected[k] = self.decay * self.expected[k] + (1 - self.decay) * v if floating else v.clone()


def bn_trainer(callbacks: Iterable[Callback]) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), device="cpu", progress=False,
                   accumulate_grad_batches=2, callbacks=list(callbacks))


def test_ema_of_every_tensor_equals_the_state_dict_formula_after_a_reload() -> None:
    """Weights, BatchNorm running statistics (averaged) and its batch count (copied) match the per-step
    state_dict formula; a checkpoint's average loaded mid-run is copied into the average in place, so the
    average stays on the model's device and the following steps keep updating it."""
    decay = 0.7
    averager, reference = EMA(decay), StateDictEMA(decay)
    trainer = bn_trainer([averager, reference])
    trainer.fit(batches(6), epochs=1)  # 3 optimizer steps
    tensors = {k: id(v) for k, v in averager.shadow.items()}
    saved = {k: v.clone() + 1 for k, v in averager.shadow.items()}  # as read from a file: other tensors
    averager.load_state_dict({"decay": decay, "shadow": saved})
    assert {k: id(v) for k, v in averager.shadow.items()} == tensors  # the same tensors, new values
    assert all(torch.equal(averager.shadow[k], v) for k, v in saved.items())
    reference.expected = {k: v.clone() for k, v in saved.items()}
    trainer.fit(batches(6, seed=1), epochs=2)  # 3 more steps
    assert averager.shadow["1.num_batches_tracked"] == trainer.model[1].num_batches_tracked == 12
    for name, expected in reference.expected.items():
        torch.testing.assert_close(averager.shadow[name], expected, rtol=1e-6, atol=1e-7, msg=name)


# ------------------------------------------------------------------ monitors are checked before training
def test_a_monitor_that_is_never_logged_fails_before_the_first_step() -> None:
    steps = []

    class Counting(Trainer):
        def training_step(self, batch: Any) -> torch.Tensor:
            steps.append(1)
            return super().training_step(batch)

    g = torch.Generator().manual_seed(0)
    loader = TensorLoader(torch.randint(0, 256, (16, 1, 4, 4), generator=g, dtype=torch.uint8),
                          torch.arange(16) % 3, 8, mean=[0.5], std=[0.25])
    data = Data(train=loader, val=loader, test=loader, classes=["a", "b", "c"], num_classes=3)
    model = {"name": "mlp", "args": {"in_features": 16, "hidden": [4], "num_classes": 3}}
    for trainer_cfg, message in [
        ({"monitor": "val/nope"}, "trainer.monitor: 'val/nope' is never logged by this recipe; logged: "),
        ({"early_stopping": {"monitor": "val/f1", "mode": "max"}},
         "trainer.early_stopping.monitor: 'val/f1' is never logged"),
    ]:
        recipe = validate_recipe({"model": model, "trainer": {"device": "cpu", **trainer_cfg}})
        with pytest.raises(HarnessError, match=message):
            build_trainer(recipe, nn.Linear(16, 3), data, run_dir=None, device=torch.device("cpu"),
                          trainer_class=Counting)
    assert steps == []


# ------------------------------------------------------------------ resuming the callbacks
# val/score per epoch: best at epoch 2, then worse. With patience 2 an uninterrupted run stops after
# epoch 4 (epochs 3 and 4 did not improve) and best.pt holds epoch 2. Epoch 4's 0.45 beats epoch 3's
# 0.4, so a resume that forgot the best value would take it for an improvement.
RESUME_SCRIPT = [0.5, 0.6, 0.4, 0.45, 0.3, 0.2]


def resumable_run(folder: Path) -> tuple[Trainer, EarlyStopping, ModelCheckpoint]:
    stopper = EarlyStopping("val/score", mode="max", patience=2)
    saver = ModelCheckpoint(folder, monitor="val/score", mode="max")
    return linear_trainer([stopper, saver], cls=scripted("score", RESUME_SCRIPT)), stopper, saver


def straight_and_resumed(tmp_path: Path, resume_after: int) -> tuple[tuple[Trainer, ...], tuple[Trainer, ...]]:
    """An uninterrupted run and one stopped after `resume_after` epochs, then resumed by fresh objects
    from its last.pt, as a new process would."""
    straight = resumable_run(tmp_path / "straight")
    straight[0].fit(batches(2), batches(1), epochs=len(RESUME_SCRIPT))
    first, _, _ = resumable_run(tmp_path / "split")
    first.fit(batches(2), batches(1), epochs=resume_after)
    resumed = resumable_run(tmp_path / "split")
    resumed[0].fit(batches(2), batches(1), epochs=len(RESUME_SCRIPT), resume_from=tmp_path / "split" / "last.pt")
    return straight, resumed


def callback_states(trainer: Trainer) -> list[dict[str, Any]]:
    return [callback.state_dict() for callback in trainer.callbacks]


@pytest.mark.parametrize("resume_after", [1, 2, 3])
def test_a_resumed_run_stops_early_at_the_epoch_an_uninterrupted_run_does(tmp_path: Path, resume_after: int) -> None:
    (straight, straight_stopper, _), (resumed, resumed_stopper, _) = straight_and_resumed(tmp_path, resume_after)
    assert straight_stopper.stopped_epoch == 4 and straight.epoch == 4  # the script's outcome
    assert (resumed_stopper.stopped_epoch, resumed.epoch) == (4, 4)
    assert resumed_stopper.state_dict() == straight_stopper.state_dict()  # best, wait, stopped_epoch
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert callback_states(resumed) == callback_states(straight)


@pytest.mark.parametrize("resume_after", [1, 2, 3])
def test_a_resumed_run_keeps_best_pt_of_the_best_epoch(tmp_path: Path, resume_after: int) -> None:
    (straight, _, straight_saver), (resumed, _, resumed_saver) = straight_and_resumed(tmp_path, resume_after)
    assert read_checkpoint(tmp_path / "straight" / "best.pt")["epoch"] == 2
    assert read_checkpoint(tmp_path / "split" / "best.pt")["epoch"] == 2
    assert resumed_saver.state_dict() == straight_saver.state_dict() == {"best": 0.6, "best_epoch": 2}
    assert callback_states(resumed) == callback_states(straight)
