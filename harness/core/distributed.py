"""torch.distributed glue: detect torchrun, set up the process group, and the few collectives we use.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous) for every process it starts; we
read them, pick NCCL on CUDA and Gloo on CPU, pin each rank to its local GPU, and set a timeout on
collectives so a dead peer ends the job with an error instead of a hang.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

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


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Initialise the process group when started by torchrun; a single process gets DistInfo().

    Returns this process's rank information. On CUDA the process is pinned to GPU `LOCAL_RANK`.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched_by_torchrun():
        return DistInfo()
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
