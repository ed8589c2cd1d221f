"""torch.distributed glue: detect torchrun, set up the process group, and the few collectives we use.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous) for every process it starts; we
read them, pick NCCL on CUDA and Gloo on CPU, pin each rank to its local GPU, and set a timeout on
collectives so a dead peer ends the job with an error instead of a hang.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from harness.errors import HarnessError

DEFAULT_TIMEOUT_S = 300  # a collective that waits longer than this raises on every rank still alive


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_device_under_torchrun(device: str) -> None:
    """Under torchrun every rank runs on GPU `LOCAL_RANK`: `cuda:N` would put all ranks on GPU N (NCCL then
    stops with "Duplicate GPU detected"), so an explicit index is refused, in one line, before anything starts."""
    if launched_by_torchrun() and str(device).startswith("cuda:"):
        raise HarnessError(f"trainer.device={device}: under torchrun each rank uses the GPU of its LOCAL_RANK; "
                           "use trainer.device=cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs")


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Initialise the process group when started by torchrun; a single process gets DistInfo().

    Returns this process's rank information. On CUDA the process is pinned to GPU `LOCAL_RANK`;
    `cuda:N` is refused under torchrun (`check_device_under_torchrun`).
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched_by_torchrun():
        return DistInfo()
    check_device_under_torchrun(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = (device == "auto" or str(device).startswith("cuda")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, local_rank, world)


def current() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def process_group_is_up() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in a single process); returns the tensor."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank: every rank must reach this call."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def nonfinite_on_any_rank(value: torch.Tensor) -> bool:
    """True if `value` holds a NaN or infinity on any rank: one all-reduce of a flag under torchrun, and
    one host read (a device sync) in any case. Every rank must reach this call; all get the same answer."""
    flag = (~torch.isfinite(value.detach())).any().to(torch.float32).reshape(1)
    return bool(all_reduce_sum(flag).item() > 0)


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[None]:
    """DDP's `no_sync()` when `sync` is False (forward and backward then only accumulate gradients on this
    rank; the next synced backward all-reduces the sum), else nothing. A model without DDP is unaffected.
    Looks through a torch.compile wrapper."""
    ddp = model
    while not isinstance(ddp, nn.parallel.DistributedDataParallel) and hasattr(ddp, "_orig_mod"):
        ddp = ddp._orig_mod
    if sync or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm layer turned into SyncBatchNorm (same parameters and buffers, so an
    optimizer built before still holds them). ValueError off CUDA: torch's SyncBatchNorm trains on GPUs only."""
    if device.type != "cuda":
        raise ValueError(f"sync_batchnorm needs CUDA ranks (device is {device.type}): torch's SyncBatchNorm "
                         "does not train on the CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Overwrite every rank's buffers (BatchNorm running statistics) with rank `src`'s, in place.

    DDP broadcasts rank 0's buffers at the start of each training forward, then each rank updates them
    with its own batch; validation runs the bare module, so without this each rank would validate a
    slightly different model, and the summed figures would belong to none of them."""
    broadcast_tensors([b for b in module.buffers()], src)


def all_gather_states(state: Any) -> list[Any]:
    """Every rank's `state` (tensors and plain data, as in a checkpoint), in rank order, on every rank
    ([state] in a single process). Sent as `torch.save` bytes and read back with weights_only: tensors
    pickled inside an object by all_gather_object itself do not load back (torch 2.14, CPU byte tensors)."""
    if not is_distributed():
        return [state]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, buffer.getvalue())
    return [torch.load(io.BytesIO(data), weights_only=True) for data in gathered]


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite every rank's tensors with rank `src`'s, in place."""
    if is_distributed():
        for t in tensors:
            dist.broadcast(t, src=src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(succeeded: bool = True) -> None:
    """Tear the process group down. After a successful command every rank first waits for the others
    (a barrier), so a rank that finished early cannot leave, and let torchrun stop the job, while
    rank 0 is still writing its files. After an error there is no barrier: the other ranks may be
    stuck in a collective that will never complete, and waiting for them would hang until the timeout."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if succeeded and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def exit_without_finalizing(code: int) -> None:
    """End a torchrun worker at once with `code`, skipping the interpreter's own teardown.

    Why: a Gloo process group that DistributedDataParallel used outlives `destroy_process_group()`
    (DDP keeps a reference to it in C++), so its worker threads are still running when Python
    finalises. Each of them may still be releasing the Work object of the last collective, which
    holds Python thread-local state; releasing it needs the GIL, and a thread that asks for the GIL
    during finalisation is ended with pthread_exit, which unwinds through a noexcept destructor:
    `terminate called without an active exception`, SIGABRT, and torchrun kills the other ranks.
    Called after every file is closed and the process group is destroyed, with stdout and stderr
    flushed here, so nothing the command produced is lost by skipping the finalisation.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
