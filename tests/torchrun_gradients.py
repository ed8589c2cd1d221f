"""Run under torchrun by tests/test_fsdp.py: the gradients each strategy produces on its ranks, against
one process's gradients of the whole batch (computed on every rank, the oracle).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_gradients.py OUT_DIR

Each rank writes OUT_DIR/rank<r>.json: for every variant (DDP, FSDP, each with and without activation
checkpointing; FSDP with two accumulated micro-batches, gradient sync on the last only) the largest
absolute difference of its gradients from the oracle's, and for FSDP the total norm that
`clip_grad_norm_` computed over the sharded (DTensor) gradients and the largest difference of the clipped
gradients from the oracle's clipped ones. Also: how many parameters had a (reduced) gradient after a
backward with gradient sync off (none: nothing was reduced), and the sync flags a Trainer with
`accumulate_grad_batches=2` set over 4 batches; under bf16 mixed precision the dtype the blocks compute
in, the dtype of the reduced gradients and their largest difference relative to the oracle's largest
gradient; and whether a Trainer refuses an optimizer built before sharding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from harness.core.activation_checkpointing import checkpoint_activations
from harness.core.fsdp import set_gradient_sync, shard_model
from harness.core.trainer import Trainer
from models import ResidualMLP

CLIP = 0.01  # far below the gradients' norm: clipping scales every gradient


def model(checkpointed: bool) -> nn.Module:
    torch.manual_seed(0)
    net = ResidualMLP(in_features=12, width=16, depth=3, expansion=2, num_classes=3)
    if checkpointed:
        checkpoint_activations(net.blocks)
    return net


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: full(p.grad).detach().clone() for name, p in net.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8 * world, 12, generator=g), torch.randint(0, 3, (8 * world,), generator=g)
    mine = slice(8 * rank, 8 * (rank + 1))  # this rank's shard of the global batch

    oracle = model(checkpointed=False)
    nn.functional.cross_entropy(oracle(x), y).backward()
    expected = grads(oracle)
    expected_norm = float(nn.utils.clip_grad_norm_(oracle.parameters(), CLIP))
    expected_clipped = grads(oracle)

    result: dict[str, float] = {"oracle_norm": expected_norm}
    for checkpointed in (False, True):
        tag = "+ac" if checkpointed else ""
        ddp = nn.parallel.DistributedDataParallel(model(checkpointed))
        nn.functional.cross_entropy(ddp(x[mine]), y[mine]).backward()
        result[f"ddp{tag}"] = max_diff(grads(ddp.module), expected)

        sharded = model(checkpointed)
        shard_model(sharded, list(sharded.blocks))
        nn.functional.cross_entropy(sharded(x[mine]), y[mine]).backward()
        result[f"fsdp{tag}"] = max_diff(grads(sharded), expected)
        result[f"fsdp{tag}_norm"] = float(full(nn.utils.clip_grad_norm_(sharded.parameters(), CLIP)))
        result[f"fsdp{tag}_clipped"] = max_diff(grads(sharded), expected_clipped)

        # two micro-batches of 4 per rank, each loss halved; gradients reduced after the second only
        accumulated = model(checkpointed)
        shard_model(accumulated, list(accumulated.blocks))
        for i, part in enumerate((slice(mine.start, mine.start + 4), slice(mine.start + 4, mine.stop))):
            set_gradient_sync(accumulated, i == 1)
            (nn.functional.cross_entropy(accumulated(x[part]), y[part]) / 2).backward()
            if i == 0:
                result[f"fsdp{tag}_reduced_before_sync"] = sum(p.grad is not None for p in accumulated.parameters())
        result[f"fsdp{tag}_accumulated"] = max_diff(grads(accumulated), expected)

    # The Trainer turns gradient sync off for every batch of an accumulation group but the last.
    trained = model(checkpointed=False)
    shard_model(trained, list(trained.blocks))
    flags: list[bool] = []
    turn = trained.set_requires_gradient_sync
    trained.set_requires_gradient_sync = lambda sync, **kw: (flags.append(sync), turn(sync, **kw))[1]
    trainer = Trainer(trained, torch.optim.SGD(trained.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu",
                      strategy="fsdp", accumulate_grad_batches=2, progress=False, loggers=[])
    trainer.fit([(x[mine][:4], y[mine][:4]), (x[mine][4:], y[mine][4:])] * 2, epochs=1)
    result["trainer_sync_flags"] = flags
    result["trainer_steps"] = trainer.global_step

    # bf16 mixed precision: blocks compute with bf16 weights, gradients are reduced and kept in fp32
    mixed = model(checkpointed=False)
    shard_model(mixed, list(mixed.blocks), precision="bf16")
    seen: list[str] = []
    mixed.blocks[0].up.register_forward_hook(lambda module, args, output: seen.append(str(module.weight.dtype)))
    nn.functional.cross_entropy(mixed(x[mine]), y[mine]).backward()
    result["bf16_compute_dtype"] = seen[0]
    result["bf16_grad_dtype"] = str(next(mixed.parameters()).grad.dtype)
    largest = max(float(g.abs().max()) for g in expected.values())
    result["bf16_relative_diff"] = max_diff(grads(mixed), expected) / largest

    # an optimizer over the parameters as they were before sharding would update tensors no longer used
    late = model(checkpointed=False)
    stale = torch.optim.SGD(late.parameters(), lr=0.1)
    shard_model(late, list(late.blocks))
    try:
        Trainer(late, stale, nn.CrossEntropyLoss(), device="cpu", strategy="fsdp", progress=False, loggers=[])
        result["stale_optimizer"] = "accepted"
    except ValueError as e:
        result["stale_optimizer"] = str(e)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
