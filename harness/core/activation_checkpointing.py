"""Activation checkpointing: keep a block's input, not its intermediate activations, and recompute them
in the backward pass (one more forward of the block, far less memory for deep models).

`checkpoint_activations` replaces each block's `forward` with the same forward run under
`torch.utils.checkpoint` (non-reentrant: works under DDP and FSDP, with inputs that need no gradient,
and restores the RNG state so dropout draws the same mask when recomputing). Only the instance's
`forward` changes: the module keeps its class, its place and its parameter names, so checkpoints,
optimizer parameter groups, `model.freeze` and `init_from` see the model exactly as without it (torch's
`checkpoint_wrapper` inserts a `_checkpoint_wrapped_module.` level into every name instead).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

_MARK = "_harness_checkpointed_forward"


def checkpoint_activations(blocks: Iterable[nn.Module]) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them; returns how many
    blocks this applied to (a block already checkpointed is left as it is)."""
    done = 0
    for block in blocks:
        if getattr(block, _MARK, None) is not None:
            continue
        forward = block.forward
        checkpointed = functools.partial(_checkpointed, forward)
        # An instance attribute: nn.Module.__call__ looks `forward` up on the instance first, inside the
        # hooks (FSDP's parameter gathering) that wrap it.
        block.forward = checkpointed  # type: ignore[method-assign]
        setattr(block, _MARK, forward)
        done += 1
    return done


def is_checkpointed(block: nn.Module) -> bool:
    return getattr(block, _MARK, None) is not None


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
