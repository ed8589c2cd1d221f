"""Fully sharded data parallelism (FSDP2, `torch.distributed.fsdp.fully_shard`) for a model too large for
data parallelism alone.

Under DDP every rank holds the whole model, its gradients and its optimizer state. `shard_model` splits
all three across the ranks: each parameter becomes a DTensor of which a rank keeps one slice (dim 0),
and the whole parameters of a block are gathered just before its forward and backward and freed after.
Each block named for sharding (a transformer block, a residual block) is one unit of that gathering,
so at most one block is whole on a rank at a time; the root gets the parameters outside every block.
The optimizer must be built after sharding: it updates the sharded parameters, which are new objects.

Validation runs the sharded model on every rank together (a forward is a collective), in `lockstep`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from harness.core.distributed import any_rank

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

# torch.distributed.fsdp (with DTensor) takes longer to import than the rest of the harness: it is imported
# by the functions that shard, and a model can only be sharded once it has been.


def is_sharded(model: nn.Module) -> bool:
    """Whether `fully_shard` has been applied to `model` (its root)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def module_classes(model: nn.Module) -> list[str]:
    """The class names of `model`'s modules, each once, in the order they first appear."""
    return list(dict.fromkeys(type(m).__name__ for m in model.modules()))


def block_modules(model: nn.Module, class_names: Sequence[str] | None) -> list[nn.Module]:
    """The modules to shard (or checkpoint) one by one: every module whose class is named in `class_names`
    (the root excepted), or with None the model's `blocks` list when it has one (else none: the root alone).

    A name that no module of the model has raises ValueError listing the classes it has."""
    if class_names is None:
        blocks = getattr(model, "blocks", None)
        return list(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else []
    present = module_classes(model)
    unknown = [name for name in class_names if name not in present]
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))} is not a module class of {type(model).__name__}; "
                         f"its module classes: {', '.join(present)}")
    wanted = set(class_names)
    return [m for m in model.modules() if m is not model and type(m).__name__ in wanted]


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """bf16: parameters gathered and computed in bfloat16 (half the all-gather traffic), gradients reduced
    in float32 (a sum over many ranks in bf16 loses the small ones); the sharded master weights stay
    float32. Other precisions: float32 throughout."""
    from torch.distributed.fsdp import MixedPrecisionPolicy  # noqa: PLC0415 (slow import: see is_sharded)

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: nn.Module, blocks: Sequence[nn.Module], *, reshard_after_forward: bool = True,
                precision: str = "32", compile_blocks: bool = False) -> nn.Module:
    """`fully_shard` each of `blocks` (innermost first), then the root; returns the root, sharded in place.

    The model must already be on this rank's device and the process group up (torchrun). With
    `reshard_after_forward` a block's gathered parameters are freed after its forward and gathered again
    for its backward (less memory, one more all-gather per block). `compile_blocks` compiles each block
    in place first (`nn.Module.compile`: names unchanged), as torch.compile meets FSDP best, block by block.
    """
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415 (slow import: see is_sharded)

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_model needs a process group: start the program with torchrun")
    policy = mixed_precision(precision)
    # Innermost first: a block inside another named block must be sharded before its parent is.
    ordered = sorted(blocks, key=lambda m: -_depth(model, m))
    for block in ordered:
        if compile_blocks:
            block.compile()
        fully_shard(block, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(model, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    return model


def _depth(root: nn.Module, module: nn.Module) -> int:
    name = next(n for n, m in root.named_modules() if m is module)
    return name.count(".") + 1


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Whether the next backward reduce-scatters the gradients. Off for every micro-batch of an accumulation
    group but the last: the unsharded gradients add up locally and are reduced once (DDP's `no_sync`)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]


def lockstep(batches: Iterable[Any], device: torch.device) -> Iterator[tuple[Any, bool]]:
    """Yield `(batch, counted)` so that every rank runs the same number of forwards.

    Evaluation shards are not padded (each sample counted once), so ranks may hold one batch more or
    fewer; a sharded forward is a collective, and a rank that stopped early would leave the others
    waiting in it. A rank out of batches repeats its last one with `counted=False` (run the forward,
    count nothing) until every rank is done: one all-reduce per batch. A rank with no batch at all has
    nothing to repeat; every rank then raises the same ValueError."""
    iterator = iter(batches)
    last = next(iterator, None)
    if any_rank(last is None, device):
        if any_rank(last is not None, device):
            raise ValueError("some ranks have no evaluation batch at all: the split has fewer samples than "
                             "ranks, and a sharded model cannot be evaluated that way")
        return
    batch: Any = last
    while any_rank(batch is not None, device):
        if batch is None:
            yield last, False
        else:
            last = batch
            yield batch, True
        batch = next(iterator, None)
