"""Learning-rate schedules from a recipe, built from torch.optim.lr_scheduler's own classes.

step, multistep and exponential count epochs and are stepped once per epoch; cosine and onecycle
follow the optimizer steps and are stepped after every one (`scheduler.interval` changes either).
Any other `scheduler.name` is a torch.optim.lr_scheduler class (or an import path) built with
`scheduler.args` and stepped per epoch unless `scheduler.interval: step`. A linear warmup
(`warmup_epochs`, or `warmup_steps` optimizer steps) runs first, on the same clock as the schedule after
it (SequentialLR). A step-based run (`trainer.max_steps`) is one stretch of max_steps optimizer steps:
warmup + cosine to `min_lr` there is nanoGPT's `get_lr` (with `warmup_start_factor` 1 / (warmup_steps + 1)).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer, lr_scheduler

from harness.errors import HarnessError
from harness.recipe.classes import BUILTIN_SCHEDULES, check_keywords, scheduler_class
from harness.recipe.schema import SchedulerConfig

# Fitted to the run's length (trainer.epochs): a resume may not change the number of epochs under these.
FITTED_TO_RUN = {"cosine", "onecycle"}


def schedule_interval(cfg: SchedulerConfig) -> str:
    """"epoch" or "step": `scheduler.interval`, else per epoch for every name but cosine and onecycle."""
    if cfg.interval is not None:
        return cfg.interval
    return "step" if cfg.name in FITTED_TO_RUN else "epoch"


def build_scheduler(
    cfg: SchedulerConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int
) -> tuple[lr_scheduler.LRScheduler | None, str]:
    """Returns (scheduler or None, interval) where interval is "epoch" or "step".

    `steps_per_epoch` counts optimizer steps (batches / accumulate_grad_batches, rounded up).
    """
    key = "warmup_steps" if cfg.warmup_steps else "warmup_epochs"
    if cfg.name == "none":
        if cfg.warmup_epochs or cfg.warmup_steps:
            raise HarnessError(f"scheduler.{key} needs a scheduler.name (e.g. cosine)")
        return None, "epoch"
    interval = schedule_interval(cfg)
    ticks_per_epoch = 1 if interval == "epoch" else steps_per_epoch
    total = epochs * ticks_per_epoch
    if cfg.warmup_steps and interval == "epoch":
        raise HarnessError(f"scheduler.warmup_steps counts optimizer steps, but {cfg.name} is stepped per epoch: "
                           "set scheduler.interval=step, or use scheduler.warmup_epochs")
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_epochs * ticks_per_epoch)
    if warmup and cfg.name == "onecycle":
        raise HarnessError(f"scheduler.{key}: onecycle has its own warmup (pct_start); set {key}: 0")
    if warmup >= total:
        raise HarnessError(f"scheduler.{key}={getattr(cfg, key)} leaves no steps for {cfg.name} ({total} "
                           f"{'optimizer steps' if interval == 'step' else 'epochs'} in all)")

    if cfg.name not in BUILTIN_SCHEDULES:
        cls = scheduler_class(cfg)
        check_keywords(cls, cfg.args, "scheduler.args", first="optimizer")
        try:
            main = cls(optimizer, **cfg.args)
        except (ValueError, TypeError) as e:
            lines = str(e).strip().splitlines()
            raise HarnessError(f"scheduler ({cls.__name__} with {cfg.args}): {lines[0] if lines else e!r}") from None
    elif cfg.name == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    elif cfg.name == "multistep":
        main = lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    elif cfg.name == "exponential":
        main = lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    elif cfg.name == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=cfg.min_lr)
    else:  # onecycle
        # None: each parameter group peaks at its own lr (optim.param_groups)
        max_lr = cfg.max_lr if cfg.max_lr is not None else [g["lr"] for g in optimizer.param_groups]
        # total + 1: the Trainer steps the scheduler after every optimizer step, the last one too. The
        # cycle ends at step total_steps - 1; one step() past it would turn the lr back up (the cosine
        # continues), and that bogus lr would be the last epoch's logged lr. Cosine below works the same
        # way: T_max steps, ending at min_lr after the last optimizer step.
        main = lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total + 1, pct_start=cfg.pct_start)
    if not warmup:
        return main, interval
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup]), interval
