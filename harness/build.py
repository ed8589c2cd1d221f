"""Build the parts of a run from a validated recipe: model, optimizer, loss, metrics, data, Trainer.

Every command (train, evaluate, ...) builds through these functions, so a recipe means the same
thing everywhere. Errors are `HarnessError` lines naming the recipe key.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.callbacks import EMA, Callback, EarlyStopping, ModelCheckpoint
from harness.config import DataConfig, LossConfig, MetricConfig, ModelConfig, OptimConfig, Recipe
from harness.device import resolve_device
from harness.errors import HarnessError
from harness.schedules import build_scheduler
from harness.trainer import Trainer


def build_model(cfg: ModelConfig) -> nn.Module:
    """`model.name` from `models.MODELS`, or `package.module:Class`, called with `model.args`."""
    if ":" in cfg.name:
        module_name, _, attr = cfg.name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise HarnessError(f"model.name {cfg.name!r}: cannot import it ({e})") from None
    else:
        from models import MODELS

        if cfg.name not in MODELS:
            raise HarnessError(
                f"model.name {cfg.name!r}: unknown model; choose one of {', '.join(MODELS)} "
                "or give an import path package.module:Class"
            )
        cls = MODELS[cfg.name]
    try:
        model = cls(**cfg.args)
    except TypeError as e:
        raise HarnessError(f"model.args for {cfg.name}: {e}") from None
    if not isinstance(model, nn.Module):
        raise HarnessError(f"model.name {cfg.name!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_optimizer(cfg: OptimConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    try:
        if cfg.name == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                   weight_decay=cfg.weight_decay)
        optimizer = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return optimizer(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    except ValueError as e:  # e.g. nesterov without momentum
        raise HarnessError(f"optim: {e}") from None


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if cfg.label_smoothing:
        raise HarnessError(f"loss.label_smoothing applies to cross_entropy only, not {cfg.name}")
    losses = {"nll": nn.NLLLoss, "mse": nn.MSELoss, "l1": nn.L1Loss, "smooth_l1": nn.SmoothL1Loss,
              "bce_with_logits": nn.BCEWithLogitsLoss}
    return losses[cfg.name]()


def build_metric(name: str, cfg: MetricConfig, num_classes: int) -> Any:
    from harness import metrics

    try:
        if cfg.type == "accuracy":
            return metrics.Accuracy(num_classes, top_k=cfg.top_k)
        if cfg.type == "confusion_matrix":
            return metrics.ConfusionMatrix(num_classes)
        cls = {"precision": metrics.Precision, "recall": metrics.Recall, "f1": metrics.F1Score}[cfg.type]
        return cls(num_classes, average=cfg.average)
    except ValueError as e:
        raise HarnessError(f"metrics.{name}: {e}") from None


def build_metrics(cfg: dict[str, MetricConfig], num_classes: int) -> dict[str, Any]:
    return {name: build_metric(name, m, num_classes) for name, m in cfg.items()}


def logged_names(recipe: Recipe) -> list[str]:
    """Every scalar a run of this recipe logs per epoch: what `monitor` may name."""
    names = ["train/loss", "lr", "epoch_seconds", "samples_per_s"]
    if recipe.data.val_size or recipe.trainer.overfit_batches:
        names.append("val/loss")
        for name, m in recipe.metrics.items():
            per_class = m.type == "confusion_matrix" or (m.type != "accuracy" and m.average == "none")
            if not per_class:
                names.append(f"val/{name}")
    return names


def check_monitors(recipe: Recipe) -> None:
    """Fail before the first step when a monitored name is never logged."""
    names = logged_names(recipe)
    checks = [("trainer.monitor", recipe.trainer.monitor)]
    if recipe.trainer.early_stopping is not None:
        checks.append(("trainer.early_stopping.monitor", recipe.trainer.early_stopping.monitor))
    for key, monitor in checks:
        if monitor is not None and monitor not in names:
            raise HarnessError(f"{key}: {monitor!r} is never logged by this recipe; logged: {', '.join(names)}")


@dataclass
class Data:
    """The loaders of a run, plus what the model and the reports need to know about the data."""

    train: Iterable[Any]
    val: Iterable[Any] | None
    test: Iterable[Any]
    classes: list[str]
    num_classes: int


def build_data(cfg: DataConfig, device: torch.device, seed: int, *, overfit_batches: int = 0,
               channels_last: bool = False, rank: int = 0, world_size: int = 1,
               split: tuple[torch.Tensor, torch.Tensor] | None = None) -> Data:
    """Load the dataset once into tensors, split a seeded validation hold-out, wrap in TensorLoaders.

    `split`: explicit `(train_idx, val_idx)` into the training split instead of the `val_size`
    hold-out (cross-validation folds)."""
    from harness.data import TensorLoader, load_dataset, train_val_split

    full = load_dataset(cfg.name, cfg.root, train=True, download=cfg.download)
    test = load_dataset(cfg.name, cfg.root, train=False, download=cfg.download)
    if split is None and cfg.val_size >= len(full):
        raise HarnessError(f"data.val_size={cfg.val_size} must be smaller than the {len(full)} training images")

    def loader(split: Any, batch_size: int, shuffle: bool) -> TensorLoader:
        return TensorLoader(split.images, split.targets, batch_size, mean=split.mean, std=split.std,
                            shuffle=shuffle, seed=seed, device=device, channels_last=channels_last,
                            rank=rank, world_size=world_size)

    if overfit_batches:
        # Train and validate on the same few fixed batches: a model that cannot fit them has a bug.
        head = full.take(torch.arange(min(len(full), overfit_batches * cfg.batch_size)))
        same = loader(head, cfg.batch_size, shuffle=False)
        return Data(same, same, loader(test, cfg.eval_batch_size, False), full.classes, full.num_classes)
    train_idx, val_idx = split if split is not None else train_val_split(len(full), cfg.val_size, seed)
    val = loader(full.take(val_idx), cfg.eval_batch_size, shuffle=False) if len(val_idx) else None
    return Data(
        train=loader(full.take(train_idx), cfg.batch_size, shuffle=True),
        val=val,
        test=loader(test, cfg.eval_batch_size, shuffle=False),
        classes=full.classes,
        num_classes=full.num_classes,
    )


def build_trainer(recipe: Recipe, model: nn.Module, data: Data, run_dir: Path | None,
                  extra_callbacks: Iterable[Callback] = (), resume_hint: str | None = None,
                  trainer_class: type[Trainer] = Trainer, checkpoints: bool = True) -> Trainer:
    """The Trainer for a recipe; `run_dir` None writes nothing (fast_dev_run, tests);
    `checkpoints=False` logs to `run_dir` but saves no checkpoints (cross-validation folds)."""
    t = recipe.trainer
    device = resolve_device(t.device)
    if t.precision == "16" and device.type != "cuda":
        raise HarnessError(f"trainer.precision: 16 needs CUDA (device is {device.type}); use bf16 or 32")
    check_monitors(recipe)
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(recipe.optim, model.parameters())
    limit_train = 1 if t.fast_dev_run else (t.overfit_batches or t.limit_train_batches)
    limit_val = 1 if t.fast_dev_run else (t.overfit_batches or t.limit_val_batches)
    batches = len(data.train) if limit_train is None else min(limit_train, len(data.train))
    epochs = 1 if t.fast_dev_run else t.epochs
    scheduler, interval = build_scheduler(recipe.scheduler, optimizer, epochs,
                                          steps_per_epoch=math.ceil(batches / t.accumulate_grad_batches))
    callbacks: list[Callback] = []
    if t.ema is not None:
        callbacks.append(EMA(t.ema.decay))  # first, so checkpoints and early stopping see EMA metrics
    if t.early_stopping is not None:
        es = t.early_stopping
        monitor = es.monitor or t.monitor
        if es.mode is None and monitor != t.monitor:
            raise HarnessError(f"trainer.early_stopping.mode: say min or max for monitor {monitor!r}")
        callbacks.append(EarlyStopping(monitor, es.mode or t.mode, es.patience, es.min_delta))
    if run_dir is not None and checkpoints:
        callbacks.append(ModelCheckpoint(run_dir / "checkpoints", t.monitor, t.mode,
                                         extra={"recipe": recipe.to_dict()}, resume_hint=resume_hint))
    callbacks.extend(extra_callbacks)
    return trainer_class(
        model, optimizer, build_loss(recipe.loss), build_metrics(recipe.metrics, data.num_classes),
        device=device, log_dir=run_dir, scheduler=scheduler, scheduler_interval=interval,
        precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        grad_clip_norm=t.grad_clip_norm, grad_clip_value=t.grad_clip_value, on_nonfinite=t.on_nonfinite,
        max_nonfinite_skips=t.max_nonfinite_skips, callbacks=callbacks,
        loggers=[] if run_dir is None else None, progress=t.progress, log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=limit_train, limit_val_batches=limit_val, compile=t.compile,
    )
