"""Run under torchrun by tests/test_distributed.py: what two CPU ranks (Gloo) compute, written per rank.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/rank_scenarios.py OUT DATA_ROOT

One job runs every scenario in turn (a torchrun start costs seconds on a small machine); each rank writes
`OUT/rank<r>.pt` (tensors and plain data) and rank 0 writes run folders under `OUT/runs`. The test
reads them afterwards and compares against single-process computations. Every tensor handed to a
torch.distributed collective is recorded with its device, to be checked against the Trainer's.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's harness, and the test models

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from harness.core.device import unwrap_model  # noqa: E402
from harness.core.distributed import exit_without_finalizing, init_distributed  # noqa: E402
from harness.core.predictions import PredictionRecorder  # noqa: E402
from harness.core.trainer import NonFiniteLossError, Trainer  # noqa: E402
from harness.data import TensorLoader  # noqa: E402
from harness.recipe.parts import build_training, setup  # noqa: E402
from harness.recipe.schema import load_recipe  # noqa: E402
from harness.workflows.training import Run  # noqa: E402

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "reduce", "gather", "scatter")
seen_devices: list[str] = []  # "<collective> <device>" of every tensor given to one


def record_collective_devices() -> None:
    """Wrap torch.distributed's tensor collectives (as harness.core and harness.metrics call them) to note
    the device of every tensor they are given."""
    for name in COLLECTIVES:
        original = getattr(dist, name)

        def wrapped(*args, __original=original, __name=name, **kwargs):
            for value in [*args, *kwargs.values()]:
                for tensor in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(tensor, torch.Tensor):
                        seen_devices.append(f"{__name} {tensor.device}")
            return __original(*args, **kwargs)

        setattr(dist, name, wrapped)


# The CNN of recipes/mnist.yaml made tiny (BatchNorm in both conv blocks, dropout before the last layer),
# a per-epoch schedule (a resume may then train longer), EMA, 2 x 4 training batches of 16 per epoch.
RUN = ["model.args={channels: [4, 8], hidden: 16, dropout: 0.5}", "scheduler.name=none", "data.val_size=50",
       "data.batch_size=16", "data.eval_batch_size=20", "trainer.ema={decay: 0.8}", "trainer.progress=false",
       "logging.tensorboard=false", "metrics.cm.type=confusion_matrix"]


def runs(out: Path, data_root: Path) -> dict:
    """Two epochs straight (its validation figures: the BatchNorm check), and one epoch then a resume to two."""
    def recipe(*more: str, path: Path = REPO / "recipes/mnist.yaml"):
        return load_recipe(path, [*RUN, f"data.root={data_root}", *more])

    straight = Run(recipe("trainer.epochs=2"), run_dir=out / "runs" / "straight", verbose=False).execute()
    Run(recipe("trainer.epochs=1"), run_dir=out / "runs" / "split", verbose=False).execute()
    dist.barrier()  # rank 0's last.pt is written before any rank reads it
    resumed = Run(recipe("trainer.epochs=2", path=out / "runs" / "split" / "config.yaml"),
                  resume=out / "runs" / "split" / "checkpoints" / "last.pt", verbose=False).execute()
    # A resume of the finished run: every rank sees it is finished (only rank 0 has the run folder) and
    # returns its summary, instead of rank 1 building and training alone until a collective times out.
    again = Run(recipe("trainer.epochs=2", path=out / "runs" / "split" / "config.yaml"),
                resume=out / "runs" / "split" / "checkpoints" / "last.pt", verbose=False).execute()
    return {"straight_final": straight["final"], "resumed_epochs": resumed["epochs_run"],
            "finished_again": again}


def rank_streams(data_root: Path) -> list[list[float]]:
    """What each rank draws right after building a run, twice over: different per rank, the same each time."""
    draws = []
    for _ in range(2):
        recipe = load_recipe(REPO / "recipes/mnist.yaml", [*RUN, f"data.root={data_root}"])
        build_training(recipe, setup(recipe), None)
        draws.append(torch.rand(4).tolist())
    return draws


def features(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def loader(batch_size: int, rank: int) -> TensorLoader:
    x, y = features()
    return TensorLoader(x, y, batch_size, mean=[0.0] * 6, std=[1.0] * 6, rank=rank, world_size=2)


def nan_skips(rank: int) -> dict:
    """on_nonfinite=skip with a NaN loss on rank 1 only: at two steps (skipped, training goes on), then from
    step 3 on (three skips in a row: halt)."""
    from odd_models import NaNOnRank

    result = {}
    for name, kwargs in (("isolated", {"calls": (2, 5)}), ("halt", {"from_call": 3})):
        torch.manual_seed(0)
        model = NaNOnRank(**kwargs)
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu",
                          on_nonfinite="skip", max_nonfinite_skips=3, progress=False, loggers=[])
        try:
            trainer.fit(loader(4, rank), epochs=1)  # 8 batches
            halted = False
        except NonFiniteLossError:
            halted = True
        result[name] = {"params": [p.detach().clone() for p in model.parameters()], "halted": halted,
                        "steps": trainer.global_step, "batches": model.training_calls}
    return result


def counting_allreduce(count: dict, bucket):
    """A DDP comm hook (its state: a dict) that counts the gradient all-reduces, then does the default one."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    count["calls"] += 1
    return allreduce_hook(None, bucket)


def accumulation(rank: int) -> dict:
    """Gradient accumulation (2 batches of 8 per step) against one batch of 16: the same steps."""
    result = {}
    for name, batch_size, accumulate in (("accumulated", 8, 2), ("one_batch", 16, 1)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu",
                          accumulate_grad_batches=accumulate, progress=False, loggers=[])
        count = {"calls": 0}
        trainer.model.register_comm_hook(count, counting_allreduce)
        trainer.fit(loader(batch_size, rank), epochs=1)
        result[name] = {"params": [p.detach().clone() for p in model.parameters()], "all_reduces": count["calls"],
                        "steps": trainer.global_step}
    return result


def scoring_with_an_idle_rank(rank: int) -> dict:
    """A test split of one image scored by 2 ranks (rank 1 gets no batch): the kept predictions and the
    most confident mistakes are gathered all the same, with rank 0's sample in them."""
    torch.manual_seed(0)
    scorer = PredictionRecorder(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), None, nn.CrossEntropyLoss(),
                                device="cpu", progress=False, loggers=[])
    batches = [(torch.rand(1, 1, 4, 4), torch.tensor([2]))] if rank == 0 else []
    scores = scorer.validate(batches, prefix="test")
    kept = scorer.predictions()
    return {"loss": scores["test/loss"], "index": kept.index.tolist(), "probs": kept.probs,
            "input_shape": list(kept.input_shape), "mistakes": kept.mistakes.index.tolist()}


VOCAB, PAD = 11, -100


def token_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """4 micro-batches of 2 sequences for `rank`, each padded to its longest (targets `PAD` past a sequence's
    end): every batch of both ranks holds another number of real tokens."""
    lengths = {0: [(8, 8), (2, 1), (5, 5), (8, 3)], 1: [(3, 1), (8, 6), (1, 1), (7, 8)]}[rank]
    batches = []
    for index, pair in enumerate(lengths):
        g = torch.Generator().manual_seed(10 * rank + index)
        width = max(pair)
        x, y = torch.randint(0, VOCAB, (2, width), generator=g), torch.randint(0, VOCAB, (2, width), generator=g)
        for row, length in enumerate(pair):
            x[row, length:], y[row, length:] = 0, PAD
        batches.append((x, y))
    return batches


def token_gpt() -> nn.Module:
    from models.gpt import GPT

    torch.manual_seed(0)
    return GPT(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def token_padding(rank: int) -> dict:
    """Two optimizer steps of 2 accumulated micro-batches per rank, padded differently on each rank and batch,
    under DDP and FSDP: the parameters after them (SGD), for the test to compare with one process."""
    from harness.core.fsdp import shard_model
    from harness.metrics import TokenCrossEntropyLoss

    result = {}
    for strategy in ("ddp", "fsdp"):
        model = token_gpt()
        if strategy == "fsdp":
            shard_model(model, list(model.blocks))
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), TokenCrossEntropyLoss(), device="cpu",
                          strategy=strategy, accumulate_grad_batches=2, progress=False, loggers=[])
        history = trainer.fit(token_batches(rank), epochs=1)
        params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        result[strategy] = {"params": [p.detach().clone() for p in params], "steps": trainer.global_step,
                            "train_loss": history[-1]["train/loss"]}
    return result


def window_losses(rank: int) -> dict:
    """A tiny GPT's summed loss per validation window, scored by 2 ranks (each every other window, 13 and 12
    of 25, the last one partly padding): gathered back in the windows' order."""
    from harness.core.window_losses import WindowLossRecorder
    from harness.data.text_chars import SequentialWindows

    ids = torch.randint(0, VOCAB, (197,), generator=torch.Generator().manual_seed(5))
    windows = SequentialWindows(ids, 8, 4, rank=rank, world_size=2)
    from harness.metrics import TokenCrossEntropyLoss

    scorer = WindowLossRecorder(token_gpt(), None, TokenCrossEntropyLoss(), device="cpu",
                                progress=False, loggers=[])
    scores = scorer.validate(windows, prefix="test")
    nll, tokens = scorer.window_losses()
    return {"loss": scores["test/loss"], "nll": nll, "tokens": tokens}


def compiled_validation(rank: int) -> dict:
    """trainer.compile under DDP: validation runs a compiled bare module too (Dynamo's eager backend here:
    the check is that validation goes through Dynamo, not what Inductor makes of it)."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    torch.compile = lambda model, **kw: real_compile(model, backend="eager", **kw)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu",
                          compile=True, progress=False, loggers=[])
        trainer.fit(loader(16, rank), epochs=1)
        before = counters["stats"]["unique_graphs"]
        trainer.validate(loader(16, rank))
        return {"eval_model": type(trainer.eval_model).__name__,
                "eval_wraps_bare_module": unwrap_model(trainer.eval_model) is model,
                "graphs_compiled_by_validation": counters["stats"]["unique_graphs"] - before}
    finally:
        torch.compile = real_compile


def main() -> None:
    out, data_root = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    info = init_distributed("cpu", timeout_s=60)  # a rank left waiting fails the test in a minute, not 5
    record_collective_devices()
    result = {"rank": info.rank, "runs": runs(out, data_root), "rank_streams": rank_streams(data_root),
              "nan_skips": nan_skips(info.rank), "accumulation": accumulation(info.rank),
              "token_padding": token_padding(info.rank),
              "compiled_validation": compiled_validation(info.rank),
              "scoring_with_an_idle_rank": scoring_with_an_idle_rank(info.rank),
              "window_losses": window_losses(info.rank)}
    result["collective_devices"] = sorted(set(seen_devices))
    torch.save(result, out / f"rank{info.rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    exit_without_finalizing(0)  # Gloo's threads outlive DDP's process group: see its docstring


if __name__ == "__main__":
    main()
