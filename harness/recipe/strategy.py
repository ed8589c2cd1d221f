"""How a recipe's model is laid out over torchrun's processes: `trainer.strategy`, `trainer.fsdp` and
`trainer.activation_checkpointing`.

`strategy_blocks` checks the class names against the model as soon as it is built (before any data is
read); `prepare_model` then applies activation checkpointing (any strategy, one process too) and, under
torchrun with `strategy: fsdp`, shards the model, before the optimizer is built over its parameters.
DDP is the Trainer's own wrapper.
"""

from __future__ import annotations

from torch import nn

from harness.core.activation_checkpointing import checkpoint_activations, is_checkpointed
from harness.core.fsdp import block_modules, is_sharded, module_classes, shard_model
from harness.errors import HarnessError
from harness.recipe.schema import Recipe


def strategy_blocks(recipe: Recipe, model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(modules sharded one by one under FSDP, modules whose activations are recomputed); a class name the
    model does not have is one HarnessError line listing the classes it has."""
    t = recipe.trainer
    try:
        shard = block_modules(model, t.fsdp.shard)
    except ValueError as e:
        raise HarnessError(f"trainer.fsdp.shard: {e}") from None
    wanted = t.activation_checkpointing
    if wanted is False or wanted == []:
        return shard, []
    if wanted is True:
        if not shard:
            raise HarnessError(f"trainer.activation_checkpointing=true: {type(model).__name__} has no `blocks` list "
                               f"and trainer.fsdp.shard names none; name the classes to checkpoint, e.g. "
                               f"trainer.activation_checkpointing=[ClassName]; its module classes: "
                               f"{', '.join(module_classes(model))}")
        _refuse_batch_norm(shard)
        return shard, shard
    try:
        checkpointed = block_modules(model, wanted)
    except ValueError as e:
        raise HarnessError(f"trainer.activation_checkpointing: {e}") from None
    _refuse_batch_norm(checkpointed)
    return shard, checkpointed


def _refuse_batch_norm(blocks: list[nn.Module]) -> None:
    """A block recomputed in the backward pass runs its forward twice in training mode: a BatchNorm inside
    would count every batch twice in its running statistics."""
    for block in blocks:
        norms = [type(m).__name__ for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            raise HarnessError(f"trainer.activation_checkpointing: {type(block).__name__} holds {norms[0]}, whose "
                               "running statistics would be updated twice per step (the forward is recomputed); "
                               "checkpoint modules without batch norm")


def prepare_model(recipe: Recipe, model: nn.Module, world_size: int) -> tuple[nn.Module, str | None]:
    """Activation checkpointing, then (FSDP under torchrun) sharding, in place; returns the model and a line
    saying what was done (None: nothing). The model must be on its device already, and the optimizer is
    built afterwards, over the parameters it then has."""
    t = recipe.trainer
    shard, checkpointed = strategy_blocks(recipe, model)
    checkpoint_activations(checkpointed)
    if t.strategy == "fsdp" and world_size > 1:
        shard_model(model, shard, reshard_after_forward=t.fsdp.reshard_after_forward, precision=t.precision,
                    compile_blocks=t.compile)
    # Said from the model as it now is, not from the lists asked for: what the run really trains.
    done = []
    if is_sharded(model):
        blocks = [m for m in model.modules() if is_sharded(m) and m is not model]
        done.append(f"FSDP over {world_size} ranks: {_count(blocks)} sharded one by one, then the root"
                    + (" (bf16 parameters, fp32 gradient reduction)" if t.precision == "bf16" else ""))
    recomputed = [m for m in model.modules() if is_checkpointed(m)]
    if recomputed:
        done.append(f"activation checkpointing: {_count(recomputed)}")
    return model, "; ".join(done) or None


def _count(modules: list[nn.Module]) -> str:
    """`3 ResidualBlock`, `2 Linear + 1 LayerNorm`, `no module` (a sharded module's class is FSDP<Name>)."""
    counts: dict[str, int] = {}
    for module in modules:
        name = type(module).__name__.removeprefix("FSDP") if is_sharded(module) else type(module).__name__
        counts[name] = counts.get(name, 0) + 1
    return " + ".join(f"{n} {name}" for name, n in counts.items()) or "no module"


def strategy_note(recipe: Recipe, world_size: int) -> str | None:
    """The line a run prints when `strategy: fsdp` has nothing to shard across (one process)."""
    if recipe.trainer.strategy != "fsdp" or world_size > 1:
        return None
    return ("note: trainer.strategy=fsdp in one process: nothing to shard across, so the model trains whole; "
            "its checkpoints are sharded folders, which a torchrun run of any size resumes")
