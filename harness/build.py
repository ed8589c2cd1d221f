"""Build the parts of a run from a validated recipe: model, optimizer, loss, metrics, data, Trainer.

Every command (train, evaluate, ...) builds through these functions, so a recipe means the same
thing everywhere. Errors are `HarnessError` lines naming the recipe key.
"""

from __future__ import annotations

import glob
import importlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
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


def matches_prefix(name: str, prefix: str) -> bool:
    """Whether dotted `name` lies under `prefix`: `features` matches `features.0.weight` and
    `features` itself, not `features_extra.weight`; "" matches everything."""
    prefix = prefix.rstrip(".")
    return not prefix or name == prefix or name.startswith(prefix + ".")


def init_model(model: nn.Module, cfg: ModelConfig) -> str | None:
    """Load `model.init_from` into a freshly built `model`; returns a line saying what was loaded.

    The file is a harness checkpoint (its raw model weights) or a plain state_dict. Its keys are
    renamed by `model.init_map`; model weights under a `model.init_skip` prefix keep their built
    values. A shape mismatch is always an error; with `model.init_strict` so are model weights the
    file lacks and file weights the model lacks. None (nothing done) without `init_from`.
    """
    if cfg.init_from is None:
        return None
    path = _init_path(cfg.init_from)
    where = f"model.init_from {path}"
    renamed = _rename_keys(_read_weights(path), cfg.init_map, where)
    own = model.state_dict()
    for prefix in cfg.init_skip:
        if not any(matches_prefix(k, prefix) for k in (*own, *renamed)):
            raise HarnessError(f"model.init_skip: {prefix!r} matches no weight of the model or of {path}")

    def skipped(key: str) -> bool:
        return any(matches_prefix(key, prefix) for prefix in cfg.init_skip)

    load = {k: v for k, v in renamed.items() if k in own and not skipped(k)}
    wrong = [k for k in load if load[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        module = k.rpartition(".")[0] or k
        raise HarnessError(f"{where}: {k} is {tuple(load[k].shape)} in the file but {tuple(own[k].shape)} in the "
                           f"model ({len(wrong)} such tensor{'s' * (len(wrong) > 1)}); to train a new layer there "
                           f"instead, skip it: model.init_skip=[{module}]")
    missing = [k for k in own if k not in load and not skipped(k)]
    unexpected = [k for k in renamed if k not in own and not skipped(k)]
    if cfg.init_strict and (missing or unexpected):
        parts = [f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' * (len(keys) > 3)})"
                 for label, keys in (("the file lacks", missing), ("the model lacks", unexpected)) if keys]
        raise HarnessError(f"{where}: {'; '.join(parts)}; rename with model.init_map, skip with "
                           "model.init_skip, or load what matches with model.init_strict=false")
    if not load:
        raise HarnessError(f"{where}: no weight of the file matches the model (first keys: {list(renamed)[:3]})")
    model.load_state_dict(load, strict=False)
    kept = len(own) - len(load)
    return f"initialised {len(load)} of {len(own)} tensors from {path}" + (f"; {kept} as built" if kept else "")


def _init_path(pattern: str) -> Path:
    """`model.init_from` as a path; a glob (`runs/pretrain/*/checkpoints/best.pt`) picks the newest match."""
    if not any(c in pattern for c in "*?["):
        return Path(pattern)
    matches = glob.glob(os.path.expanduser(pattern))
    if not matches:
        raise HarnessError(f"model.init_from: no file matches {pattern}")
    return Path(max(matches, key=os.path.getmtime))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from harness.checkpoint import FORMAT, load_file

    if not path.is_file():
        raise HarnessError(f"model.init_from: file not found: {path}")
    state = load_file(path, f"model.init_from {path}")
    if isinstance(state, dict) and state.get("format") == FORMAT:  # a harness checkpoint
        state = state.get("model")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HarnessError(f"model.init_from {path}: neither a harness checkpoint nor a state_dict "
                           "(a dict of tensors)")
    return state


def _rename_keys(weights: dict[str, torch.Tensor], mapping: dict[str, str], where: str) -> dict[str, torch.Tensor]:
    """Apply `model.init_map`: the longest matching old prefix of each key is replaced by its new one."""
    for old in mapping:
        if not any(matches_prefix(k, old) for k in weights):
            raise HarnessError(f"model.init_map: {old!r} matches no weight in {where.split(' ', 1)[1]} "
                               f"(first keys: {list(weights)[:3]})")
    renamed = {}
    for key, value in weights.items():
        old = max((o for o in mapping if matches_prefix(key, o)), key=len, default=None)
        if old is not None:
            rest = key[len(old.rstrip(".")):].lstrip(".")
            key = ".".join(part for part in (mapping[old].strip("."), rest) if part)
        renamed[key] = value
    return renamed


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
    return [group for group in groups if group["params"]]


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


@dataclass
class DataSource:
    """The splits `data.name` provides, `data.classes` applied, before any hold-out.

    A split is an `ImageTensors` (the tensor path: TensorLoader, batch augmentation on the device),
    a map-style dataset (the DataLoader path) or, from an import function, a ready loader (used as is).
    """

    train: Any
    test: Any
    val: Any  # a validation split of its own (image_folder's val/, an import function's "val"), or None
    holdout: Any  # the training samples with evaluation transforms: the `val_size` hold-out comes from here
    classes: list[str]
    collate_fn: Any = None  # the DataLoader path's, when not the default (image_folder normalises batches)


def load_data_source(cfg: DataConfig) -> DataSource:
    """Read `data.name` (built-in, `image_folder` or `import:module:function`) and keep `data.classes`."""
    if cfg.name == "image_folder":
        source = _image_folder_source(cfg)
    elif cfg.name.startswith("import:"):
        source = _import_source(cfg)
    else:
        from harness.data import load_dataset

        full = _with_stats(load_dataset(cfg.name, cfg.root, train=True, download=cfg.download), cfg)
        test = _with_stats(load_dataset(cfg.name, cfg.root, train=False, download=cfg.download), cfg)
        source = DataSource(full, test, None, full, full.classes)
    if cfg.classes is None:
        return source

    def keep(split: Any) -> Any:
        from harness.data import ImageTensors, select_classes, subset_classes

        if split is None:
            return None
        if isinstance(split, ImageTensors):
            return subset_classes(split, cfg.classes)
        if is_loader(split):
            raise HarnessError(f"data.classes: {cfg.name} gave a loader; class subsets need datasets")
        return select_classes(split, cfg.classes, source.classes)

    train = keep(source.train)
    return DataSource(train, keep(source.test), keep(source.val),
                      train if source.holdout is source.train else keep(source.holdout),
                      [source.classes[c] for c in cfg.classes], source.collate_fn)


def build_data(cfg: DataConfig, device: torch.device, seed: int, *, overfit_batches: int = 0,
               channels_last: bool = False, rank: int = 0, world_size: int = 1,
               indices: tuple[torch.Tensor, torch.Tensor] | None = None) -> Data:
    """The loaders of a recipe's data: `load_data_source`, then a seeded validation hold-out of
    `data.val_size` (unless the source has its own val split), a seeded `data.train_size` subset,
    and loaders: TensorLoader for tensors (augmenting training batches on the device), the
    DataLoader path for datasets.

    `indices`: explicit `(train_idx, val_idx)` into the training split instead of the `val_size`
    hold-out (cross-validation folds)."""
    from harness.data import ImageTensors, TensorLoader, make_dataloader, random_subset, train_val_split

    source = load_data_source(cfg)
    augment = _batch_augment(cfg, source.train)

    def loader(split: Any, batch_size: int, shuffle: bool, augment: Any = None) -> Any:
        if isinstance(split, ImageTensors):
            return TensorLoader(split.images, split.targets, batch_size, mean=split.mean, std=split.std,
                                shuffle=shuffle, seed=seed, device=device, channels_last=channels_last,
                                rank=rank, world_size=world_size, augment=augment)
        if is_loader(split):
            return split
        return make_dataloader(split, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                               num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                               persistent_workers=cfg.persistent_workers, collate_fn=source.collate_fn)

    classes = source.classes
    test = loader(source.test, cfg.eval_batch_size, shuffle=False)
    if is_loader(source.train):  # an import function's own loaders: nothing to split or subsample
        if overfit_batches or indices is not None or cfg.train_size is not None:
            raise HarnessError(f"{cfg.name} gave a training loader: trainer.overfit_batches, data.train_size "
                               "and cross-validation need a dataset")
        if source.val is None and cfg.val_size:
            raise HarnessError(f"data.val_size={cfg.val_size}: {cfg.name} gave a training loader, nothing can be "
                               "held out of it; return a 'val' split too, or set data.val_size=0")
        val = None if source.val is None else loader(source.val, cfg.eval_batch_size, shuffle=False)
        return Data(source.train, val, test, classes, len(classes))

    n = len(source.train)
    if overfit_batches:
        # Train and validate on the same few fixed batches (not augmented): a model that cannot fit them has a bug.
        head = _take(source.holdout, torch.arange(min(n, overfit_batches * cfg.batch_size)))
        same = loader(head, cfg.batch_size, shuffle=False)
        return Data(same, same, test, classes, len(classes))
    own_val = indices is None and source.val is not None  # data.val_size is then not used
    if indices is not None:
        train_idx, val_idx = indices
    elif own_val:
        train_idx, val_idx = torch.arange(n), torch.arange(0)
    else:
        if cfg.val_size >= n:
            raise HarnessError(f"data.val_size={cfg.val_size} must be smaller than the {n} training images")
        train_idx, val_idx = train_val_split(n, cfg.val_size, seed)
    if cfg.train_size is not None:
        if cfg.train_size > len(train_idx):
            raise HarnessError(f"data.train_size={cfg.train_size} is more than the {len(train_idx)} training "
                               "images left after the validation hold-out")
        train_idx = train_idx[random_subset(len(train_idx), cfg.train_size, seed)]
    if own_val:
        val = loader(source.val, cfg.eval_batch_size, shuffle=False)
    else:
        val = loader(_take(source.holdout, val_idx), cfg.eval_batch_size, shuffle=False) if len(val_idx) else None
    everything = len(train_idx) == n  # all of it (the indices are sorted): use it as is, no copy
    train = loader(source.train if everything else _take(source.train, train_idx), cfg.batch_size, shuffle=True,
                   augment=augment)
    return Data(train=train, val=val, test=test, classes=classes, num_classes=len(classes))


def is_loader(split: Any) -> bool:
    """A ready loader (a DataLoader, or an iterable without __getitem__), not a dataset."""
    return isinstance(split, torch.utils.data.DataLoader) or not hasattr(split, "__getitem__")


def _take(split: Any, index: torch.Tensor) -> Any:
    from harness.data import ImageTensors

    if isinstance(split, ImageTensors):
        return split.take(index)
    return torch.utils.data.Subset(split, index.tolist())


def _with_stats(split: Any, cfg: DataConfig) -> Any:
    """`split` with `data.mean` / `data.std` when the recipe sets them."""
    from harness.data import ImageTensors

    if cfg.mean is None or cfg.std is None or not isinstance(split, ImageTensors):
        return split
    channels = split.images.shape[1]
    if len(cfg.mean) != channels or len(cfg.std) != channels:
        raise HarnessError(f"data.mean / data.std: {channels} values needed (one per channel), "
                           f"got {len(cfg.mean)} / {len(cfg.std)}")
    return replace(split, mean=tuple(cfg.mean), std=tuple(cfg.std))


def _batch_augment(cfg: DataConfig, train: Any) -> Any:
    """The BatchAugment of `data.augment` for a tensor training split; None when off or not tensors."""
    from harness.data import BatchAugment, ImageTensors

    if cfg.augment is None:
        return None
    if not isinstance(train, ImageTensors):
        if cfg.name != "image_folder":  # image_folder put the same ops in its transforms
            raise HarnessError(f"data.augment: {cfg.name} gave datasets, not tensors; put the augmentation "
                               "in its transforms")
        return None
    crop = cfg.augment.random_crop
    height, width = train.images.shape[-2:]
    if crop is not None and not crop.size == height == width:
        raise HarnessError(f"data.augment.random_crop.size={crop.size} must equal the {height}x{width} image size: "
                           "validation images are not cropped (shift the crop with padding)")
    return BatchAugment(crop.size if crop else None, crop.padding if crop else 0, cfg.augment.horizontal_flip)


def _image_folder_source(cfg: DataConfig) -> DataSource:
    from harness.data import augment_transforms, load_image_folder, resolve_data_root
    from harness.data.map_style import IMAGENET_MEAN, IMAGENET_STD

    transforms = []
    if cfg.augment is not None:
        crop = cfg.augment.random_crop
        if crop is not None and crop.size != cfg.image_size:
            raise HarnessError(f"data.augment.random_crop.size={crop.size} must equal data.image_size="
                               f"{cfg.image_size}: validation images are not cropped (shift the crop with padding)")
        transforms = augment_transforms(crop.size if crop else None, crop.padding if crop else 0,
                                        cfg.augment.horizontal_flip)
    splits = load_image_folder(resolve_data_root(cfg.root), cfg.image_size, cfg.mean or IMAGENET_MEAN,
                               cfg.std or IMAGENET_STD, transforms)
    return DataSource(splits.train, splits.test, splits.val, splits.train_eval, splits.classes, splits.collate_fn)


IMPORT_KEYS = ("train", "test", "val", "classes")


def _import_source(cfg: DataConfig) -> DataSource:
    """`import:package.module:function`: `function(cfg)` returns {"train", "test", optional "val", "classes"}."""
    module_name, _, attr = cfg.name.removeprefix("import:").partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise HarnessError(f"data.name {cfg.name!r}: cannot import it ({e})") from None
    result = function(cfg)
    shape = "a dict with 'train' and 'test' (datasets, ImageTensors or loaders), optional 'val' and 'classes'"
    if not isinstance(result, dict) or "train" not in result or "test" not in result:
        got = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise HarnessError(f"data.name {cfg.name!r}: the function must return {shape}; got {got}")
    unknown = sorted(set(result) - set(IMPORT_KEYS))
    if unknown:
        raise HarnessError(f"data.name {cfg.name!r}: unknown keys {unknown} in what it returned; allowed: "
                           f"{', '.join(IMPORT_KEYS)}")
    train, test, val = (_with_stats(result.get(k), cfg) for k in ("train", "test", "val"))
    classes = result.get("classes") or getattr(train, "classes", None)
    if not classes:
        raise HarnessError(f"data.name {cfg.name!r}: say the class names: return 'classes' too, or give the "
                           "training split a `classes` attribute")
    return DataSource(train, test, val, train, list(classes))


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
    freeze_parameters(model, recipe.model.freeze)  # frozen parameters never reach the optimizer
    optimizer = build_optimizer(recipe.optim, parameter_groups(model, recipe.optim))
    limit_train = 1 if t.fast_dev_run else (t.overfit_batches or t.limit_train_batches)
    limit_val = 1 if t.fast_dev_run else (t.overfit_batches or t.limit_val_batches)
    batches = len(data.train) if limit_train is None else min(limit_train, len(data.train))
    epochs = 1 if t.fast_dev_run else t.epochs
    # fast_dev_run's single batch leaves no room for a warmup: run the schedule without it.
    schedule = recipe.scheduler.model_copy(update={"warmup_epochs": 0.0}) if t.fast_dev_run else recipe.scheduler
    scheduler, interval = build_scheduler(schedule, optimizer, epochs,
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
