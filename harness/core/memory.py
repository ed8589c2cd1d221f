"""What a rank holds: the bytes of its parameters, gradients and optimizer state, against the same for
the whole (unsharded) model, and the peak memory of the process.

Sharded parameters are DTensors: `to_local()` is this rank's slice, `numel()` the whole tensor's. Under
DDP or in one process both are the same tensor, so the per-rank figure equals the unsharded one.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

KINDS = ("parameters", "gradients", "optimizer_state")


def _local_and_whole(tensor: torch.Tensor) -> tuple[int, int]:
    """(bytes this rank holds, bytes of the whole tensor)."""
    size = tensor.element_size()
    # A DTensor exists only once torch.distributed.tensor is imported (slow: imported by sharding alone).
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(tensor, dtensor.DTensor):
        return tensor.to_local().numel() * size, tensor.numel() * size
    return tensor.numel() * size, tensor.numel() * size


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, dict[str, int]]:
    """{kind: {"rank": bytes held here, "unsharded": bytes of the whole}} for parameters, gradients (those
    that exist now) and the optimizer's state tensors (its moments; created by the first step)."""
    totals = {kind: [0, 0] for kind in KINDS}

    def add(kind: str, tensor: torch.Tensor) -> None:
        local, whole = _local_and_whole(tensor)
        totals[kind][0] += local
        totals[kind][1] += whole

    for param in model.parameters():
        add("parameters", param)
        if param.grad is not None:
            add("gradients", param.grad)
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    add("optimizer_state", value)
    return {kind: {"rank": local, "unsharded": whole} for kind, (local, whole) in totals.items()}


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(peak bytes, what was measured): on CUDA the allocator's peak of tensor memory on this rank's GPU,
    else the peak resident set size of this process (tensors, the interpreter and libraries together)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kibibytes on Linux, in bytes on macOS
    return (peak if sys.platform == "darwin" else peak * 1024), "peak resident set size of the process"


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (every rank must call this); `[value]` in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def per_rank_report(measured: list[dict[str, dict[str, int]]]) -> dict[str, Any]:
    """Every rank's `state_bytes` as {kind: {"per_rank": [bytes, ...], "unsharded": bytes}}."""
    return {kind: {"per_rank": [m[kind]["rank"] for m in measured], "unsharded": measured[0][kind]["unsharded"]}
            for kind in KINDS}


def format_report(report: dict[str, Any]) -> str:
    """`parameters 1.05 MB per rank of 2.10 MB unsharded, gradients ..., optimizer_state ...` (rank 0's
    figure; the range over ranks when shards differ in size); in one process `parameters 2.10 MB, ...`."""
    parts = []
    for kind in KINDS:
        per_rank, whole = report[kind]["per_rank"], report[kind]["unsharded"]
        if len(per_rank) == 1:  # one process: nothing is sharded, the whole state is in it
            parts.append(f"{kind.replace('_', ' ')} {format_bytes(whole)}")
            continue
        low, high = min(per_rank), max(per_rank)
        held = format_bytes(low) if low == high else f"{format_bytes(low)}-{format_bytes(high)}"
        parts.append(f"{kind.replace('_', ' ')} {held} per rank of {format_bytes(whole)} unsharded")
    return ", ".join(parts)


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def bytes_saved_for_backward(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps from `forward()` (which returns a scalar loss) for its backward:
    what activation checkpointing reduces. Runs the backward too, so the kept tensors are freed."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    loss.backward()
    return total
