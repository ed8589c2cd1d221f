"""The PyTorch classes a recipe names: `optim.name`, `loss.name` and `scheduler.name`.

A name is a class of `torch.optim`, `torch.nn` (its `*Loss` classes) or `torch.optim.lr_scheduler`,
in any case, or an import path `package.module:Class` to one of your own. Its keyword arguments
(`optim.args`, `loss.args`, `scheduler.args`) are checked against the class's signature here, before
any data is read: an unknown name or keyword is one `HarnessError` line listing what is allowed.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from harness.errors import HarnessError
from harness.metrics.tokens import TokenCrossEntropyLoss
from harness.recipe.imports import import_object
from harness.recipe.schema import LossConfig, OptimConfig, SchedulerConfig

# scheduler.name values configured by the scheduler.* keys (harness.recipe.schedules builds them)
BUILTIN_SCHEDULES = ("none", "step", "multistep", "exponential", "cosine", "onecycle")


def _loss_key(name: str) -> str:
    """`CrossEntropyLoss`, `cross_entropy` and `crossentropy` -> `crossentropy`."""
    key = name.lower().replace("_", "")
    return key.removesuffix("loss") or key


def _catalogue(module: Any, base: type, key: Any = str.lower, suffix: str = "") -> dict[str, type]:
    """key -> class for the public classes of `module` that subclass `base` (and end with `suffix`)."""
    found = {}
    for name in dir(module):
        obj = getattr(module, name)
        if (not name.startswith("_") and isinstance(obj, type) and issubclass(obj, base) and obj is not base
                and name.endswith(suffix)):
            found[key(name)] = obj
    return found


OPTIMIZERS = _catalogue(torch.optim, torch.optim.Optimizer)
# torch.nn's losses, and the harness's cross-entropy over (..., V) logits of a language model (token_cross_entropy)
LOSSES = {**_catalogue(nn, nn.Module, key=_loss_key, suffix="Loss"),
          _loss_key(TokenCrossEntropyLoss.__name__): TokenCrossEntropyLoss}
SCHEDULERS = {**_catalogue(lr_scheduler, lr_scheduler.LRScheduler),
              "reducelronplateau": lr_scheduler.ReduceLROnPlateau}


def _resolve(name: str, key: str, catalogue: dict[str, type], lookup: str, where: str) -> type:
    if ":" in name:
        cls = import_object(name, f"{where} {name!r}")
        if not isinstance(cls, type):
            raise HarnessError(f"{where} {name!r}: is a {type(cls).__name__}, not a class")
        return cls
    if lookup not in catalogue:
        choices = ", ".join(sorted(c.__name__ for c in set(catalogue.values())))
        raise HarnessError(f"{where} {name!r}: unknown; choose a class of {key} ({choices}), in any case, "
                           "or give an import path package.module:Class")
    return catalogue[lookup]


def optimizer_class(cfg: OptimConfig) -> type[torch.optim.Optimizer]:
    """The class `optim.name` names; LBFGS (its step needs a closure the loop does not give) is refused."""
    cls = _resolve(cfg.name, "torch.optim", OPTIMIZERS, cfg.name.lower(), "optim.name")
    if issubclass(cls, torch.optim.LBFGS):
        raise HarnessError(f"optim.name {cfg.name!r}: LBFGS steps with a closure that re-evaluates the loss, "
                           "which this training loop does not give; choose another optimizer (adamw, sgd, ...)")
    return cls


def loss_class(cfg: LossConfig) -> type[nn.Module]:
    return _resolve(cfg.name, "torch.nn", LOSSES, _loss_key(cfg.name), "loss.name")


def scheduler_class(cfg: SchedulerConfig) -> type[Any]:
    """The class of a `scheduler.name` that is not one of `BUILTIN_SCHEDULES`."""
    lookup = cfg.name.lower().replace("_", "")
    cls = _resolve(cfg.name, "torch.optim.lr_scheduler", SCHEDULERS, lookup, "scheduler.name")
    if issubclass(cls, lr_scheduler.ReduceLROnPlateau):
        raise HarnessError(f"scheduler.name {cfg.name!r}: ReduceLROnPlateau steps on a metric's value, which the "
                           "loop does not pass; choose a schedule of the step or the epoch count (StepLR, ...)")
    return cls


def keyword_names(cls: type) -> list[str] | None:
    """The keyword arguments `cls(...)` accepts after its first positional one; None: any (it takes **kwargs)."""
    params = list(inspect.signature(cls).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                 inspect.Parameter.KEYWORD_ONLY)]


def check_keywords(cls: type, kwargs: dict[str, Any], where: str, first: str | None = None) -> None:
    """Every key of `kwargs` is a keyword `cls` takes, and every argument it needs is given: else one line.

    `first`: the positional argument the harness passes (an optimizer's `params`, a scheduler's
    `optimizer`), which `kwargs` may not name."""
    accepted = keyword_names(cls)
    shown = [name for name in accepted or () if name != first]
    for key in kwargs:
        if key == first or (accepted is not None and key not in accepted):
            raise HarnessError(f"{where}.{key}: {cls.__name__} takes no keyword {key!r}; "
                               f"accepted: {', '.join(shown) or 'none'}")
    params = inspect.signature(cls).parameters
    needed = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name != first
              and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
              and name not in kwargs]
    if needed:
        raise HarnessError(f"{where}: {cls.__name__} needs {', '.join(needed)} (e.g. {where}.{needed[0]}=...)")


def optimizer_keywords(cfg: OptimConfig, cls: type) -> dict[str, Any]:
    """The keyword arguments the optimizer is built with: the short keys that apply to `cls`, then `optim.args`.

    `lr` goes to every optimizer; `weight_decay` to every one that takes it; `momentum` / `nesterov` to
    SGD; `betas` to Adam and AdamW. A short key set for a class it does not apply to is refused, and so
    is an `optim.args` key that repeats one the short keys already pass."""
    accepted = keyword_names(cls)

    def takes(key: str) -> bool:
        return accepted is None or key in accepted

    defaults = OptimConfig()
    short: dict[str, Any] = {"lr": cfg.lr}
    if not takes("lr"):
        raise HarnessError(f"optim.name {cfg.name!r}: {cls.__name__} takes no lr; the harness sets it in each "
                           "parameter group, so the class must accept it")
    if takes("weight_decay"):
        short["weight_decay"] = cfg.weight_decay
    elif cfg.weight_decay:
        raise HarnessError(f"optim.weight_decay: {cls.__name__} takes no weight_decay")
    kept = {"momentum": issubclass(cls, torch.optim.SGD), "nesterov": issubclass(cls, torch.optim.SGD),
            "betas": issubclass(cls, (torch.optim.Adam, torch.optim.AdamW))}
    for key, applies in kept.items():
        if applies:
            short[key] = getattr(cfg, key)
        elif getattr(cfg, key) != getattr(defaults, key):
            raise HarnessError(f"optim.{key} applies to {'SGD' if key != 'betas' else 'Adam and AdamW'} only, "
                               f"not {cls.__name__}: set optim.args.{key} instead")
    for key in cfg.args:
        if key in short:
            raise HarnessError(f"optim.args.{key}: set optim.{key} instead (one place for each setting)")
    check_keywords(cls, cfg.args, "optim.args", first="params")
    return {**short, **cfg.args}


def loss_keywords(cfg: LossConfig, cls: type) -> dict[str, Any]:
    """`loss.args`, plus `label_smoothing` for CrossEntropyLoss (refused for any other class). A list
    given for `weight` or `pos_weight` (per-class weights) becomes the tensor the class expects."""
    kwargs = {key: torch.tensor(value, dtype=torch.float32) if key in ("weight", "pos_weight")
              and isinstance(value, list) else value for key, value in cfg.args.items()}
    if "label_smoothing" in kwargs:
        raise HarnessError("loss.args.label_smoothing: set loss.label_smoothing instead")
    if issubclass(cls, nn.CrossEntropyLoss):
        kwargs["label_smoothing"] = cfg.label_smoothing
    elif cfg.label_smoothing:
        raise HarnessError(f"loss.label_smoothing applies to CrossEntropyLoss only, not {cls.__name__}")
    check_keywords(cls, cfg.args, "loss.args")
    return kwargs


def check_classes(optim: OptimConfig, loss: LossConfig, scheduler: SchedulerConfig) -> None:
    """Resolve the three names and check their keywords: the recipe's mistakes, before any data is read."""
    optimizer_keywords(optim, optimizer_class(optim))
    loss_keywords(loss, loss_class(loss))
    if scheduler.name in BUILTIN_SCHEDULES:
        if scheduler.args:
            raise HarnessError(f"scheduler.args: scheduler.name {scheduler.name!r} is configured by the scheduler.* "
                               "keys; scheduler.args is for a class named in scheduler.name (e.g. StepLR)")
    else:
        check_keywords(scheduler_class(scheduler), scheduler.args, "scheduler.args", first="optimizer")
