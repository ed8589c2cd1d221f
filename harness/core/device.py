"""Pick the device and move batches to it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` -> CUDA when present, else MPS when present, else CPU; `cuda` without CUDA is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"device {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(
                f"device {name!r} requested but CUDA is not available on this machine; use 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HarnessError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise HarnessError(f"device {name!r} requested but MPS is not available on this machine; use 'cpu' or 'auto'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise HarnessError(f"device {name!r} is not supported; allowed: auto, cpu, cuda, cuda:N, mps")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """ValueError unless `precision` is "32", "bf16" or "16", and "16" runs on CUDA (fp16 needs the
    GradScaler, which is CUDA-only here); the Trainer and the recipe layer both ask this one function."""
    if precision not in ("32", "bf16", "16"):
        raise ValueError(f"precision {precision!r}: allowed are '32', 'bf16', '16'")
    if precision == "16" and device.type != "cuda":
        raise ValueError(f"16 needs CUDA (device is {device.type}); use bf16 or 32")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple / list / dict batch; non_blocking overlaps copies from pinned memory."""
    if isinstance(batch, torch.Tensor):
        # The fast path's batches are made on the device already: skip .to()'s dispatch (~4 us a step).
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def mark_batch_dynamic(batch: Any) -> None:
    """For torch.compile: mark dimension 0 of every tensor in a (nested) batch as dynamic, so one graph
    serves every batch size (the short last batch of an epoch, a validation batch) instead of a recompile
    for each. `maybe_mark_dynamic`: a model that needs a fixed batch size gets its own graph, no error."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim > 0:
            torch._dynamo.maybe_mark_dynamic(batch, 0)
    elif isinstance(batch, dict):
        for value in batch.values():
            mark_batch_dynamic(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            mark_batch_dynamic(value)


def float32_predictions(preds: Any) -> Any:
    """Half-precision (bf16 / fp16) predictions as float32, anything else as it is: metrics then rank,
    threshold and sum scores as an fp32 evaluation does (bf16 keeps 8 bits of mantissa: argmax ties)."""
    if isinstance(preds, torch.Tensor) and preds.dtype in (torch.bfloat16, torch.float16):
        return preds.float()
    return preds


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (host-side metadata, no device sync)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}: it holds no tensor")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model
