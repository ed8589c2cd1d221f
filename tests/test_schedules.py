"""build_scheduler in a real Trainer.fit: the learning rate at every optimizer step equals the curve of
the same torch.optim.lr_scheduler objects built and stepped by hand (per epoch or per step)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.optim import Optimizer, lr_scheduler

from harness import Trainer
from harness.core.callbacks import Callback
from harness.data import TensorLoader
from harness.errors import HarnessError
from harness.recipe.build import build_trainer
from harness.recipe.data import Data
from harness.recipe.schedules import build_scheduler
from harness.recipe.schema import SchedulerConfig, validate_recipe
from models import MLP

LR = 0.1
EPOCHS = 4
STEPS = 5  # batches (= optimizer steps) per epoch


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class LRRecorder(Callback):
    """The learning rate after each training batch (the optimizer step and a per-step schedule ran)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def fit_with_schedule(cfg: SchedulerConfig) -> tuple[list[float], list[float]]:
    """(lr after every step, history lr per epoch) of a Trainer.fit with build_scheduler's schedule; the
    history's lr_end per epoch is kept in `LAST_LR_END`."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler, interval = build_scheduler(cfg, optimizer, EPOCHS, STEPS)
    recorder = LRRecorder()
    trainer = Trainer(model, optimizer, nn.MSELoss(), device="cpu", progress=False, scheduler=scheduler,
                      scheduler_interval=interval, callbacks=[recorder])
    batches = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(STEPS)]
    history = trainer.fit(batches, epochs=EPOCHS)
    LAST_LR_END[:] = [h["lr_end"] for h in history]
    return recorder.lrs, [h["lr"] for h in history]


LAST_LR_END: list[float] = []


def by_hand(make: Callable[[Optimizer], lr_scheduler.LRScheduler], interval: str) -> tuple[list[float], list[float]]:
    """The same loop without the Trainer: step, (per-step schedule), record; per-epoch schedule at epoch end.
    Returns (lr after every step, lr at every epoch's start)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = make(optimizer)
    lrs, starts = [], []
    for _ in range(EPOCHS):
        starts.append(optimizer.param_groups[0]["lr"])
        for _ in range(STEPS):
            optimizer.step()
            if interval == "step":
                scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        if interval == "epoch":
            scheduler.step()
    starts.append(optimizer.param_groups[0]["lr"])  # where the last epoch left it
    return lrs, starts


TOTAL = EPOCHS * STEPS
CASES = {
    "step": (dict(name="step", step_size=2, gamma=0.5), "epoch",
             lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    "multistep": (dict(name="multistep", milestones=[1, 3], gamma=0.1), "epoch",
                  lambda o: lr_scheduler.MultiStepLR(o, milestones=[1, 3], gamma=0.1)),
    "exponential": (dict(name="exponential", gamma=0.7), "epoch",
                    lambda o: lr_scheduler.ExponentialLR(o, gamma=0.7)),
    "cosine": (dict(name="cosine", min_lr=0.01), "step",
               lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL, eta_min=0.01)),
    "onecycle": (dict(name="onecycle", max_lr=0.5, pct_start=0.25), "step",
                 lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=TOTAL + 1, pct_start=0.25)),
    "warmup+cosine": (dict(name="cosine", warmup_epochs=1, warmup_start_factor=0.2), "step",
                      lambda o: lr_scheduler.SequentialLR(o, [
                          lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=STEPS),
                          lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL - STEPS)], milestones=[STEPS])),
    "warmup+step": (dict(name="step", warmup_epochs=1, step_size=1, gamma=0.5), "epoch",
                    lambda o: lr_scheduler.SequentialLR(o, [
                        lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=1),
                        lr_scheduler.StepLR(o, step_size=1, gamma=0.5)], milestones=[1])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lr_at_every_step_matches_torch_schedulers_stepped_by_hand(case: str) -> None:
    settings, interval, make = CASES[case]
    lrs, history_lrs = fit_with_schedule(SchedulerConfig(**settings))
    expected, starts = by_hand(make, interval)
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # history's lr is the rate each epoch started with (for a per-epoch schedule, the one it trained with);
    # lr_end the rate its scheduler steps left, the next epoch's start.
    assert history_lrs == pytest.approx(starts[:-1], rel=1e-12)
    assert LAST_LR_END == pytest.approx(starts[1:], rel=1e-12, abs=1e-15)
    if interval == "step":  # a per-step schedule's first epoch logs the rate it started at, not where it ended
        assert history_lrs[0] != pytest.approx(expected[STEPS - 1])
    assert len(set(lrs)) > 1  # the schedule moved


def test_warmup_then_cosine_has_the_closed_form_shape() -> None:
    """Independent of torch: linear from 0.2*lr to lr over one epoch of steps, then cosine to 0."""
    lrs, _ = fit_with_schedule(SchedulerConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.2))
    expected = []
    for t in range(1, TOTAL + 1):  # lr after t optimizer steps
        if t < STEPS:
            expected.append(LR * (0.2 + 0.8 * t / STEPS))
        else:
            expected.append(LR * (1 + math.cos(math.pi * (t - STEPS) / (TOTAL - STEPS))) / 2)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_warmup_then_step_has_the_closed_form_shape() -> None:
    _, history_lrs = fit_with_schedule(SchedulerConfig(name="step", warmup_epochs=1, step_size=1, gamma=0.5))
    assert history_lrs == pytest.approx([0.1 * LR, LR, 0.5 * LR, 0.25 * LR], rel=1e-12)


def test_onecycle_counts_optimizer_steps_with_accumulation_and_limits() -> None:
    """steps_per_epoch = ceil(limited batches / accumulation): onecycle ends exactly at its last step
    (one step too many would raise in torch, one too few would stop short of the final lr)."""
    recipe = validate_recipe({
        "scheduler": {"name": "onecycle", "max_lr": 0.05},
        "trainer": {"epochs": 2, "accumulate_grad_batches": 3, "limit_train_batches": 7, "device": "cpu",
                    "progress": False},
        "model": {"name": "mlp", "args": {"in_features": 16, "hidden": [8], "num_classes": 3}},
    })
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (80, 1, 4, 4), generator=g, dtype=torch.uint8)
    loader = TensorLoader(images, torch.randint(0, 3, (80,), generator=g), 8, mean=[0.5], std=[0.25])
    data = Data(train=loader, val=loader, test=loader, classes=["a", "b", "c"], num_classes=3)
    recorder = LRRecorder()
    trainer = build_trainer(recipe, MLP(16, [8], 3), data, run_dir=None, device=torch.device("cpu"),
                            extra_callbacks=[recorder])
    trainer.fit(data.train, data.val, epochs=2)
    assert trainer.global_step == 2 * math.ceil(7 / 3)
    assert trainer.scheduler.last_epoch == trainer.global_step  # one scheduler step per optimizer step
    assert len(recorder.lrs) == 2 * 7
    # OneCycleLR's last lr: initial_lr / final_div_factor = max_lr / div_factor / final_div_factor
    assert recorder.lrs[-1] == pytest.approx(0.05 / 25 / 1e4, rel=1e-9)
    assert 0.04 < max(recorder.lrs) <= 0.05  # near the peak after the ~30% rise


def test_bad_warmups_fail_with_one_line() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(HarnessError, match="leaves no steps for cosine"):
        build_scheduler(SchedulerConfig(name="cosine", warmup_epochs=4), optimizer, EPOCHS, STEPS)
    with pytest.raises(HarnessError, match="onecycle has its own warmup"):
        build_scheduler(SchedulerConfig(name="onecycle", warmup_epochs=1), optimizer, EPOCHS, STEPS)
    with pytest.raises(HarnessError, match=r"needs a scheduler\.name"):
        build_scheduler(SchedulerConfig(warmup_epochs=1), optimizer, EPOCHS, STEPS)
