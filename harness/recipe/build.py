"""Build the parts of a run from a validated recipe: model, optimizer, loss, metrics, data, Trainer.

Every command (train, evaluate, ...) builds through these functions, so a recipe means the same
thing everywhere. Errors are `HarnessError` lines naming the recipe key.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from harness import metrics
from harness.core.callbacks import EMA, Callback, EarlyStopping, ModelCheckpoint
from harness.core.distributed import any_rank, current, is_distributed, is_main_process
from harness.core.fsdp import is_sharded
from harness.core.seed import get_rng_state, set_rng_state
from harness.core.text_samples import TextSamples
from harness.core.trainer import Trainer
from harness.data.text_chars import TEXT_CHARS, decode, encode
from harness.errors import HarnessError
from harness.recipe.classes import loss_class, loss_keywords, optimizer_class, optimizer_keywords
from harness.recipe.data import Data
from harness.recipe.imports import import_object
from harness.recipe.schedules import build_scheduler, schedule_interval
from harness.recipe.schema import LossConfig, MetricConfig, ModelConfig, OptimConfig, Recipe
from harness.recipe.strategy import prepare_model, strategy_note
from models import MODELS


def model_class(cfg: ModelConfig) -> Any:
    """The class `model.name` names: from `models.MODELS`, or `package.module:Class`."""
    if ":" in cfg.name:
        return import_object(cfg.name, f"model.name {cfg.name!r}")
    if cfg.name not in MODELS:
        raise HarnessError(
            f"model.name {cfg.name!r}: unknown model; choose one of {', '.join(MODELS)} "
            "or give an import path package.module:Class"
        )
    return MODELS[cfg.name]


def build_model(cfg: ModelConfig, vocab_size: int | None = None) -> nn.Module:
    """`model.name` from `models.MODELS`, or `package.module:Class`, called with `model.args`.

    `vocab_size`: the size of the data's vocabulary when the data is token ids (`Data.vocabulary`:
    text_chars' characters, text_lines' words, which depend on the training sentences and so on the split
    and the fold). It is given to the class's `vocab_size` keyword, sizing the embedding to the data;
    `model.args.vocab_size` may then only repeat it."""
    cls = model_class(cfg)
    args = dict(cfg.args)
    vocab_parameter = _parameters(cls).get("vocab_size")
    takes_vocabulary = vocab_parameter is not None
    if vocab_size is not None:
        if not takes_vocabulary:
            raise HarnessError(f"model.name={cfg.name} takes no vocab_size, but the data gives token ids of a "
                               f"{vocab_size}-token vocabulary: choose a model that embeds them (gpt, text_cnn, "
                               "text_transformer) or one whose __init__ takes vocab_size")
        if args.get("vocab_size", vocab_size) != vocab_size:
            raise HarnessError(f"model.args.vocab_size={args['vocab_size']}: the embedding is sized from the "
                               f"data's vocabulary, {vocab_size} tokens (text_lines: the training sentences' words, "
                               f"<pad> and <unk> included); remove model.args.vocab_size or set it to {vocab_size}")
        args["vocab_size"] = vocab_size
    elif takes_vocabulary and "vocab_size" not in args and vocab_parameter.default is inspect.Parameter.empty:
        raise HarnessError(f"model.name={cfg.name} embeds token ids and needs a vocabulary size: use it with text "
                           "data (text_lines, text_chars: their vocabulary sizes it), or set model.args.vocab_size")
    try:
        model = cls(**args)
    except TypeError as e:
        raise HarnessError(f"model.args for {cfg.name}: {e}") from None
    if not isinstance(model, nn.Module):
        raise HarnessError(f"model.name {cfg.name!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def _parameters(cls: Any) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): it takes what it takes
        return {}


def matches_prefix(name: str, prefix: str) -> bool:
    """Whether dotted `name` lies under `prefix`: `features` matches `features.0.weight` and
    `features` itself, not `features_extra.weight`; "" matches everything."""
    prefix = prefix.rstrip(".")
    return not prefix or name == prefix or name.startswith(prefix + ".")


def freeze_parameters(model: nn.Module, prefixes: Iterable[str]) -> int:
    """`requires_grad=False` on every parameter under one of `prefixes` (`model.freeze`); returns how many.

    BatchNorm running statistics are buffers, not parameters: they still update in training mode.
    """
    named = list(model.named_parameters())
    frozen = 0
    for prefix in prefixes:
        if not any(matches_prefix(name, prefix) for name, _ in named):
            top = ", ".join(name for name, _ in model.named_children())
            raise HarnessError(f"model.freeze: {prefix!r} matches no parameter; the model's modules: {top}")
    for name, param in named:
        if any(matches_prefix(name, prefix) for prefix in prefixes):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: trainable parameters only (frozen ones are left out), each in the first
    `optim.param_groups` entry whose prefix matches, the rest in a first group with `optim.lr`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise HarnessError("model.freeze leaves no parameter to train")
    groups: list[dict[str, Any]] = [{"params": []}]
    for g in cfg.param_groups:
        groups.append({"params": [], **{k: v for k, v in (("lr", g.lr), ("weight_decay", g.weight_decay))
                                         if v is not None}})
    for name, param in named:
        i = next((i for i, g in enumerate(cfg.param_groups, start=1) if matches_prefix(name, g.prefix)), 0)
        groups[i]["params"].append(param)
    for g, group in zip(cfg.param_groups, groups[1:], strict=True):
        if not group["params"]:
            if any(matches_prefix(n, g.prefix) for n, _ in named):
                why = "an earlier group's prefix took them all"
            elif any(matches_prefix(n, g.prefix) for n, _ in model.named_parameters()):
                why = "its parameters are frozen (model.freeze)"
            else:
                why = f"the model's modules: {', '.join(n for n, _ in model.named_children())}"
            raise HarnessError(f"optim.param_groups: prefix {g.prefix!r} matches no trainable parameter; {why}")
    groups = [group for group in groups if group["params"]]
    if not cfg.weight_decay_1d:  # nanoGPT's rule: matmul weights and embeddings decay, biases and norm gains do not
        groups = [part for group in groups for part in _split_by_ndim(group)]
    return groups


def _split_by_ndim(group: dict[str, Any]) -> list[dict[str, Any]]:
    """A group as (its parameters of 2+ dimensions, its 1-D ones with weight_decay 0), empty halves dropped."""
    matrices = {**group, "params": [p for p in group["params"] if p.ndim >= 2]}
    vectors = {**group, "params": [p for p in group["params"] if p.ndim < 2], "weight_decay": 0.0}
    return [part for part in (matrices, vectors) if part["params"]]


# Optimizers with a fused CUDA step that takes the GradScaler's inf flag on the device (no .item() per step)
FUSED_ON_CUDA = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def fused_keywords(cls: type, kwargs: dict[str, Any], device: torch.device | None) -> dict[str, Any]:
    """`kwargs` plus `fused=True` for SGD, Adam and AdamW on CUDA: one kernel for the whole step, and
    `GradScaler.step` (precision 16) hands it the inf flag on the device instead of reading it with a host
    sync. Left as given when the recipe says `optim.args.fused` or `foreach` itself, or off CUDA."""
    if device is None or device.type != "cuda" or cls not in FUSED_ON_CUDA or {"fused", "foreach"} & kwargs.keys():
        return kwargs
    return {**kwargs, "fused": True}


def build_optimizer(cfg: OptimConfig, params: Iterable[Any],
                    device: torch.device | None = None) -> torch.optim.Optimizer:
    """`optim.name` (any torch.optim class, or an import path) with the short keys that apply and `optim.args`;
    on a CUDA `device`, SGD / Adam / AdamW get `fused=True` (`fused_keywords`)."""
    cls = optimizer_class(cfg)
    kwargs = fused_keywords(cls, optimizer_keywords(cfg, cls), device)
    try:
        return cls(params, **kwargs)
    except (ValueError, TypeError) as e:  # e.g. nesterov without momentum, rho outside [0, 1]
        raise HarnessError(f"optim ({cls.__name__} with {_shown(kwargs)}): {_first_line(e)}") from None


def build_loss(cfg: LossConfig) -> nn.Module:
    """`loss.name` (any torch.nn loss class, or an import path) called with `loss.args`."""
    cls = loss_class(cfg)
    kwargs = loss_keywords(cfg, cls)
    try:
        loss = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise HarnessError(f"loss ({cls.__name__} with {_shown(kwargs)}): {_first_line(e)}") from None
    if not callable(loss):
        raise HarnessError(f"loss.name {cfg.name!r} built a {type(loss).__name__}, which cannot be called")
    return loss


def _shown(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) or "no arguments"


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def build_metric(name: str, cfg: MetricConfig, num_classes: int) -> Any:
    try:
        if cfg.type == "accuracy":
            return metrics.Accuracy(num_classes, top_k=cfg.top_k)
        if cfg.type == "confusion_matrix":
            return metrics.ConfusionMatrix(num_classes)
        if cfg.type in ("auroc", "average_precision"):
            ranking = {"auroc": metrics.AUROC, "average_precision": metrics.AveragePrecision}[cfg.type]
            return ranking(num_classes, average=cfg.average, thresholds=cfg.thresholds)
        if cfg.type == "calibration_error":
            return metrics.CalibrationError(num_classes, n_bins=cfg.n_bins, norm=cfg.norm)
        if cfg.type == "brier":
            return metrics.BrierScore(num_classes)
        if cfg.type in ("perplexity", "bits_per_token", "token_accuracy"):
            token = {"perplexity": metrics.Perplexity, "bits_per_token": metrics.BitsPerToken,
                     "token_accuracy": metrics.TokenAccuracy}[cfg.type]
            return token(ignore_index=cfg.ignore_index)
        cls = {"precision": metrics.Precision, "recall": metrics.Recall, "f1": metrics.F1Score}[cfg.type]
        return cls(num_classes, average=cfg.average)
    except ValueError as e:
        raise HarnessError(f"metrics.{name}: {e}") from None


def build_metrics(cfg: dict[str, MetricConfig], num_classes: int) -> dict[str, Any]:
    return {name: build_metric(name, m, num_classes) for name, m in cfg.items()}


def logged_names(recipe: Recipe, validates: bool | None = None) -> list[str]:
    """Every scalar a run of this recipe logs per epoch: what `monitor` may name.

    `validates`: whether the run has validation data; None decides from the recipe (a `data.val_size`
    hold-out, or `trainer.overfit_batches`). Cross-validation passes True: its held-out fold is the
    validation data whatever `data.val_size` says."""
    unit = "epoch" if recipe.trainer.max_steps is None else "interval"
    names = ["train/loss", "lr", "lr_end", f"{unit}_seconds", "samples_per_s"]
    if recipe.trainer.throughput:
        names += [*(["tokens_per_s"] if recipe.data.name == TEXT_CHARS else []), "flops_per_s", "peak_memory_mb"]
    if validates is None:
        validates = has_validation(recipe)
    if validates:
        names.append("val/loss")
        for name, m in recipe.metrics.items():
            averaged = m.type in ("precision", "recall", "f1", "auroc", "average_precision")
            per_class = m.type == "confusion_matrix" or (averaged and m.average == "none")
            if not per_class:
                names.append(f"val/{name}")
    return names


Mode = Literal["min", "max"]


def has_validation(recipe: Recipe) -> bool:
    """Whether a run of the recipe validates: a `data.val_size` hold-out, `trainer.overfit_batches`, or a
    source with a validation split of its own (text_chars: the last 10 % of the text)."""
    return bool(recipe.data.val_size or recipe.trainer.overfit_batches or recipe.data.name == TEXT_CHARS)


def run_monitor(recipe: Recipe, validates: bool | None = None,
                monitor: str | None = None, mode: Mode | None = None) -> tuple[str, Mode]:
    """The (monitor, mode) a run watches: `trainer.monitor` / `mode` (or the given pair), except that a run
    without validation data (`data.val_size: 0`) watches `train/loss` / `min` instead of a `val/` name it
    never logs (`validates`: see `logged_names`)."""
    monitor, mode = monitor or recipe.trainer.monitor, mode or recipe.trainer.mode
    if validates is None:
        validates = has_validation(recipe)
    if not validates and monitor.startswith("val/"):
        return FALLBACK_MONITOR
    return monitor, mode


# what a run without validation data watches instead of a val/ metric
FALLBACK_MONITOR: tuple[str, Mode] = ("train/loss", "min")


def monitor_note(recipe: Recipe, validates: bool | None = None) -> str | None:
    """The note a run prints when `run_monitor` falls back to train/loss; None when it does not."""
    if run_monitor(recipe, validates)[0] == recipe.trainer.monitor:
        return None
    return (f"note: no validation data (data.val_size: 0), so best.pt and early stopping watch train/loss (min) "
            f"instead of trainer.monitor={recipe.trainer.monitor}")


def check_monitors(recipe: Recipe, validates: bool | None = None) -> None:
    """Fail before the first step when a monitored name is never logged (`validates`: see `logged_names`)."""
    names = logged_names(recipe, validates)
    checks = [("trainer.monitor", run_monitor(recipe, validates)[0])]
    if recipe.trainer.early_stopping is not None:
        es = recipe.trainer.early_stopping
        checks.append(("trainer.early_stopping.monitor", run_monitor(recipe, validates, es.monitor, es.mode)[0]))
    for key, monitor in checks:
        if monitor not in names:
            raise HarnessError(f"{key}: {monitor!r} is never logged by this recipe; logged: {', '.join(names)}")


def build_trainer(recipe: Recipe, model: nn.Module, data: Data, run_dir: Path | None, device: torch.device,
                  extra_callbacks: Iterable[Callback] = (), resume_hint: str | None = None,
                  trainer_class: type[Trainer] = Trainer, checkpoints: bool = True,
                  shared_run_dir: Path | None = None) -> Trainer:
    """The training Trainer for a recipe on `device` (resolved once, by `harness.recipe.parts.setup`);
    `run_dir` None writes nothing (fast_dev_run, tests); `checkpoints=False` logs to `run_dir` but
    saves no checkpoints (cross-validation folds). `shared_run_dir`: the run folder rank 0 made, given to
    the other ranks under `strategy: fsdp`, where every rank writes its slice of each checkpoint."""
    t = recipe.trainer
    validates = data.val is not None
    check_monitors(recipe, validates)
    monitor, mode = run_monitor(recipe, validates)
    world_size = current().world_size
    for note in (monitor_note(recipe, validates), strategy_note(recipe, world_size)):
        if note is not None and is_main_process():
            print(note, file=sys.stderr, flush=True)
    if t.sync_batchnorm and is_distributed() and device.type != "cuda":
        raise HarnessError(f"trainer.sync_batchnorm=true needs CUDA ranks (device is {device.type}): torch's "
                           "SyncBatchNorm does not train on the CPU; leave it false (validation uses rank 0's "
                           "BatchNorm statistics on every rank either way)")
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    freeze_parameters(model, recipe.model.freeze)  # frozen parameters never reach the optimizer
    # Activation checkpointing and FSDP sharding; the optimizer comes after: it must hold the sharded parameters.
    model, laid_out = prepare_model(recipe, model, world_size)
    if laid_out is not None and is_main_process():
        print(f"# {laid_out}", flush=True)
    optimizer = build_optimizer(recipe.optim, parameter_groups(model, recipe.optim), device)
    limits = batch_limits(recipe)
    # fast_dev_run's single batch leaves no room for a warmup: run the schedule without it.
    schedule = recipe.scheduler.model_copy(update={"warmup_epochs": 0.0, "warmup_steps": 0}) if t.fast_dev_run \
        else recipe.scheduler
    if t.max_steps is None:
        scheduler, interval = build_scheduler(schedule, optimizer, epochs_to_run(recipe),
                                              steps_per_epoch=steps_per_epoch(recipe, len(data.train)))
    else:  # the whole run is one stretch of max_steps optimizer steps
        scheduler, interval = build_scheduler(schedule, optimizer, 1, steps_per_epoch=steps_to_run(recipe) or 1)
    callbacks: list[Callback] = []
    if t.ema is not None:
        callbacks.append(EMA(t.ema.decay))  # first, so checkpoints and early stopping see EMA metrics
    if t.early_stopping is not None:
        es = t.early_stopping
        if es.mode is None and es.monitor is not None and es.monitor != t.monitor:
            raise HarnessError(f"trainer.early_stopping.mode: say min or max for monitor {es.monitor!r}")
        stop_monitor, stop_mode = run_monitor(recipe, validates, es.monitor, es.mode)
        callbacks.append(EarlyStopping(stop_monitor, stop_mode, es.patience, es.min_delta))
    folder = run_dir if run_dir is not None else shared_run_dir
    if folder is not None and checkpoints:
        extra: dict[str, Any] = {"recipe": recipe.to_dict(), "run_dir": str(folder.resolve())}
        if data.vocabulary is not None:  # what the token ids mean: scoring, exporting and sampling check or decode it
            extra["vocabulary"] = data.vocabulary
        callbacks.append(ModelCheckpoint(folder / "checkpoints", monitor, mode, extra=extra, resume_hint=resume_hint,
                                         sharded=t.strategy == "fsdp"))
    # Rank 0 writes the sample; under FSDP every rank generates it with rank 0 (`folder` is then rank 0's run
    # folder on every rank), since each forward of a sharded model gathers its parameters from all ranks.
    if recipe.logging.sample is not None and folder is not None and recipe.logging.tensorboard:
        callbacks.append(text_samples(recipe, model, data))
    callbacks.extend(extra_callbacks)
    return trainer_class(
        model, optimizer, build_loss(recipe.loss), build_metrics(recipe.metrics, data.num_classes),
        device=device, log_dir=run_dir, scheduler=scheduler, scheduler_interval=interval,
        precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        grad_clip_norm=t.grad_clip_norm, grad_clip_value=t.grad_clip_value, on_nonfinite=t.on_nonfinite,
        max_nonfinite_skips=t.max_nonfinite_skips, callbacks=callbacks,
        loggers=[] if run_dir is None else None, tensorboard=recipe.logging.tensorboard, progress=t.progress,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=limits.train, limit_val_batches=limits.val, limit_test_batches=limits.test,
        compile=t.compile, sync_batchnorm=t.sync_batchnorm, throughput=t.throughput, strategy=t.strategy,
    )


def check_sample(recipe: Recipe, model: nn.Module | type[nn.Module]) -> None:
    """`logging.sample` needs text data and a model that generates (the model or its class, which is known
    before any data is read; the prompt's characters are checked against the vocabulary once the text is read)."""
    if recipe.logging.sample is None:
        return
    if recipe.data.name != TEXT_CHARS:
        raise HarnessError(f"logging.sample generates text: data.name={recipe.data.name} is not a text to continue "
                           f"({TEXT_CHARS})")
    if not (isinstance(model, nn.Module) or isinstance(model, type)):  # a factory: its model is checked once built
        return
    if not callable(getattr(model, "generate", None)):
        raise HarnessError(f"logging.sample: model.name={recipe.model.name} has no generate(idx, max_new_tokens, "
                           "temperature, top_k, generator) method to sample with (models.gpt.GPT has one)")


def text_samples(recipe: Recipe, model: nn.Module, data: Data) -> TextSamples:
    """The `logging.sample` callback: a text model (its `generate`) on text data (its vocabulary)."""
    cfg = recipe.logging.sample
    assert cfg is not None
    check_sample(recipe, model)
    vocabulary = data.vocabulary
    assert vocabulary is not None  # text_chars: see check_sample
    try:
        prompt = encode(cfg.prompt, vocabulary)
    except HarnessError as e:
        raise HarnessError(f"logging.sample.prompt={cfg.prompt!r}: {e}") from None
    return TextSamples(prompt, lambda ids: decode(ids, vocabulary), cfg.tokens, cfg.temperature, cfg.top_k, cfg.seed)


def build_evaluator(recipe: Recipe, model: nn.Module, device: torch.device, metric_cfg: dict[str, MetricConfig],
                    num_classes: int, trainer_class: type[Trainer] = Trainer) -> Trainer:
    """A Trainer that only scores (no optimizer, hence no DDP wrapper and no gradients) over whole
    splits: the recipe's loss, precision and channels_last, and the metrics a report needs. The
    recipe's batch limits (`limit_val_batches`, `fast_dev_run`, `overfit_batches`) are training
    budgets and do not apply. `trainer_class`: a Trainer subclass to build (one that keeps per-sample
    predictions, say)."""
    t = recipe.trainer
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return trainer_class(model, None, build_loss(recipe.loss), build_metrics(metric_cfg, num_classes),
                         device=device, precision=t.precision, loggers=[], progress=False)


class BatchLimits:
    """How many batches a training epoch, a validation pass and the final test use (None: all)."""

    def __init__(self, train: int | None, val: int | None, test: int | None) -> None:
        self.train, self.val, self.test = train, val, test


def batch_limits(recipe: Recipe) -> BatchLimits:
    """`fast_dev_run` (one batch of each), else `overfit_batches` (train and validation), else the
    `limit_*_batches` keys. The test is limited only by `fast_dev_run` and `limit_test_batches`:
    a budget for training must not shrink the figure the run reports."""
    t = recipe.trainer
    if t.fast_dev_run:  # step-based: one step (steps_to_run), not a batch limit
        return BatchLimits(1 if t.max_steps is None else None, 1, 1)
    return BatchLimits(t.overfit_batches or t.limit_train_batches, t.overfit_batches or t.limit_val_batches,
                       t.limit_test_batches)


def epochs_to_run(recipe: Recipe) -> int:
    """`trainer.epochs`, or 1 with `fast_dev_run`: the one length the loop and the schedule both use."""
    return 1 if recipe.trainer.fast_dev_run else recipe.trainer.epochs


def steps_to_run(recipe: Recipe) -> int | None:
    """`trainer.max_steps`, or 1 with `fast_dev_run`; None for a recipe that trains epochs."""
    if recipe.trainer.max_steps is None:
        return None
    return 1 if recipe.trainer.fast_dev_run else recipe.trainer.max_steps


def validations_to_run(recipe: Recipe) -> int:
    """How many validations the run makes: its epochs, or a step-based run's intervals of
    `trainer.val_every_n_steps` (the last may be shorter); each ends with `on_epoch_end`."""
    steps = steps_to_run(recipe)
    if steps is None:
        return epochs_to_run(recipe)
    return math.ceil(steps / (validation_interval(recipe) or steps))


def validation_interval(recipe: Recipe) -> int | None:
    """Steps between validations of a step-based run (`trainer.val_every_n_steps`; None: at the end only)."""
    return 1 if recipe.trainer.fast_dev_run and recipe.trainer.max_steps else recipe.trainer.val_every_n_steps


def check_step_settings(recipe: Recipe) -> None:
    """Keys that need epochs, or steps, refused before any data is read (one line each)."""
    t, sched = recipe.trainer, recipe.scheduler
    if recipe.data.name == TEXT_CHARS and t.max_steps is None:
        raise HarnessError(f"data.name={TEXT_CHARS} draws windows at random offsets and has no epochs: "
                           "set trainer.max_steps (and trainer.val_every_n_steps)")
    if sched.warmup_steps and sched.warmup_epochs:
        raise HarnessError("scheduler.warmup_steps and scheduler.warmup_epochs: give one or the other")
    if t.max_steps is None or sched.name == "none":
        return
    if sched.warmup_epochs:
        raise HarnessError("scheduler.warmup_epochs: with trainer.max_steps there are no epochs; "
                           "set scheduler.warmup_steps instead")
    if schedule_interval(sched) == "epoch":
        raise HarnessError(f"scheduler.name={sched.name} is stepped per epoch, and trainer.max_steps trains without "
                           "epochs: set scheduler.interval=step (its counts are then optimizer steps)")
    if sched.warmup_steps >= t.max_steps and sched.name != "onecycle":  # onecycle: refused for any warmup
        raise HarnessError(f"scheduler.warmup_steps={sched.warmup_steps} leaves no steps for {sched.name} "
                           f"(trainer.max_steps={t.max_steps} optimizer steps in all)")


def steps_per_epoch(recipe: Recipe, train_batches: int) -> int:
    """Optimizer steps in one epoch of `train_batches` batches: the one length the schedule and the
    loop both use (the last accumulation group of an epoch may be short, and still steps)."""
    limit = batch_limits(recipe).train
    batches = train_batches if limit is None else min(limit, train_batches)
    return math.ceil(batches / recipe.trainer.accumulate_grad_batches)


def check_model_fits_data(recipe: Recipe, trainer: Trainer, data: Data) -> None:
    """One test batch through `validation_step` before the first training step: a model whose outputs
    do not fit the data (5 outputs for 10 classes, (N, 1, 10) for cross-entropy) fails here, in one
    line, instead of with a traceback after an epoch. The RNG states are put back: the check draws
    nothing that training would draw."""
    rng = get_rng_state()
    model, was_training = trainer.eval_model, trainer.eval_model.training
    # The bare module, as validate runs it: no DDP collective that a rank with no test batch would miss.
    # A sharded model's forward is a collective: then every rank runs it, or none does.
    training_model, trainer.model = trainer.model, model
    model.eval()
    try:
        batch = next(iter(data.test), None)
        if any_rank(batch is None, trainer.device) if is_sharded(model) else batch is None:
            return
        with torch.no_grad(), trainer.autocast():
            _, preds, target = trainer.validation_step(trainer.to_device(batch))  # as validate feeds it
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise HarnessError(f"model.name={recipe.model.name} does not fit data.name={recipe.data.name} "
                           f"({data.num_classes} classes): one test batch through the model and "
                           f"loss.name={recipe.loss.name} fails: {reason}") from None
    finally:
        trainer.model = training_model
        model.train(was_training)
        set_rng_state(rng)
    classifies = issubclass(loss_class(recipe.loss), (nn.CrossEntropyLoss, nn.NLLLoss))
    # one score per class for every target: (batch, classes), or (batch, tokens, vocabulary) for a language model
    expected = (*target.shape, data.num_classes)
    if classifies and preds.is_floating_point() and tuple(preds.shape) != expected:
        shape = ", ".join(["batch", *(str(n) for n in target.shape[1:]), str(data.num_classes)])
        raise HarnessError(f"model.name={recipe.model.name} gives outputs of shape {tuple(preds.shape)} for a batch "
                           f"of {target.shape[0]}, but data.name={recipe.data.name} has {data.num_classes} classes: "
                           f"the model must output ({shape}); set its number of outputs in model.args")
