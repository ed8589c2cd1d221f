"""The Python checks `benchmarks/gpu_check.sh` runs, one subcommand each; each prints what it measured.

    python benchmarks/gpu_check.py fake-data ROOT [--small]        fake MNIST and CIFAR-10 files (tests/conftest.py)
    python benchmarks/gpu_check.py sync-audit RECIPE key=value ...  synchronising CUDA calls per source line of a run
    python benchmarks/gpu_check.py nccl                             (under torchrun) which tensors a collective takes
    python benchmarks/gpu_check.py loader-numerics                  TensorLoader batches, CPU against the GPU
    python benchmarks/gpu_check.py graphs DATA RUNS [--backend B]   Dynamo graphs of a compiled run with a short batch
    python benchmarks/gpu_check.py resume DATA RUNS DET [--limit N] 2 epochs straight vs 1 + resume + 1: weight diff

Without CUDA every subcommand still runs (on the CPU) except sync-audit and nccl, which say so.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's harness; the fake-data writers of the tests

import torch  # noqa: E402

CUDA = torch.cuda.is_available()


def fake_data(root: Path, small: bool) -> None:
    from conftest import write_fake_cifar10, write_fake_mnist

    n_train, n_test, per_batch = (3000, 1000, 600) if small else (60000, 10000, 10000)
    write_fake_mnist(root, n_train=n_train, n_test=n_test)
    write_fake_cifar10(root, n_per_batch=per_batch, n_test=n_test)
    # A text for the GPT recipe (data.path=text.txt, model.args.vocab_size=27): the alphabet, then seeded words
    # of lower-case letters drawn from 200, spaced: 27 characters, about 12 KB (--small) or 800 KB.
    rng = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(letters[i] for i in torch.randint(0, 26, (2 + k % 7,), generator=rng)) for k in range(200)]
    drawn = torch.randint(0, len(words), (n_test * (2 if small else 14),), generator=rng)
    text = " ".join([letters, *(words[int(i)] for i in drawn)])
    (root / "text.txt").write_text(text)
    print(f"fake MNIST {n_train}/{n_test} and CIFAR-10 {5 * per_batch}/{n_test} images, {len(text)} characters of "
          f"text under {root}")


def sync_audit(recipe_path: str, overrides: list[str]) -> None:
    """Every call that makes the host wait for the GPU, counted per line (torch's sync debug mode)."""
    if not CUDA:
        print("skipped: no CUDA device (torch.cuda.set_sync_debug_mode reports GPU waits only)")
        return
    from harness.recipe.schema import load_recipe
    from harness.workflows.training import Run

    counts: collections.Counter[str] = collections.Counter()

    def hook(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            where = filename.rsplit("site-packages/", 1)[-1].replace(f"{REPO}/", "")
            counts[f"{where}:{lineno}"] += 1

    warnings.showwarning = hook
    warnings.simplefilter("always")
    recipe = load_recipe(recipe_path, overrides)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        summary = Run(recipe, recipe_path, verbose=False).execute()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    if "steps_run" in summary:  # step-based (text): batches = optimizer steps x accumulated batches
        steps = summary["steps_run"] * recipe.trainer.accumulate_grad_batches
    else:
        steps = summary["epochs_run"] * (recipe.trainer.limit_train_batches or 0)
    print(f"precision {recipe.trainer.precision}: {sum(counts.values())} synchronising calls over {steps} "
          f"training batches, validation and test (count  file:line):")
    for where, n in counts.most_common(15):
        print(f"{n:6d}  {where}")


def nccl() -> None:
    """Which tensors an NCCL group takes (a CPU tensor is what the EMA broadcast used to hand it)."""
    import torch.distributed as dist

    if not CUDA:
        print("skipped: no CUDA device (NCCL needs one)")
        return
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl")
    for name, t in [("float64 cuda", torch.ones(2, dtype=torch.float64, device="cuda")),
                    ("int64 cuda", torch.ones(2, dtype=torch.int64, device="cuda")),
                    ("float32 cpu", torch.ones(2))]:
        try:
            dist.all_reduce(t)
            dist.broadcast(t, 0)
            torch.cuda.synchronize()
            print("ok   ", name)
        except Exception as e:  # what NCCL says is the result
            print("FAIL ", name, "->", type(e).__name__, str(e).strip().splitlines()[0][:150])
    box = [{"x": 1}]
    dist.broadcast_object_list(box)
    print("ok    broadcast_object_list")
    dist.destroy_process_group()


def loader_numerics() -> None:
    """TensorLoader batches on the GPU against the CPU (normalisation, augmentation gather, channels_last)."""
    from harness.data import BatchAugment, TensorLoader

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(1000) % 10
    device = "cuda" if CUDA else "cpu"
    for channels_last in (False, True):
        kw = {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26), "shuffle": True, "seed": 3,
              "channels_last": channels_last, "augment": BatchAugment(32, 4, 0.5)}
        a, b = TensorLoader(x, y, 128, device="cpu", **kw), TensorLoader(x, y, 128, device=device, **kw)
        a.set_epoch(2)
        b.set_epoch(2)
        pairs = list(zip(a, b, strict=True))
        diff = max((xa - xb.cpu()).abs().max().item() for (xa, _), (xb, _) in pairs)
        same = all(torch.equal(ya, yb.cpu()) for (_, ya), (_, yb) in pairs)
        print(f"channels_last={channels_last}: max |cpu - {device}| {diff:.2e}, targets equal {same}")


def graphs(data: Path, runs: Path, backend: str | None) -> None:
    """Dynamo graphs of a compiled 2-epoch run whose epochs end on a short batch: one for training and
    one for validation are expected (the batch dimension is dynamic), and no recompile-limit fallback."""
    from torch._dynamo.utils import counters

    from harness.recipe.schema import load_recipe
    from harness.workflows.training import Run

    if backend:
        real_compile = torch.compile
        torch.compile = lambda model, **kw: real_compile(model, backend=backend, **kw)
    recipe = load_recipe(REPO / "recipes/mnist.yaml", [
        f"data.root={data}", f"logging.root={runs}", "logging.name=graphs", "trainer.compile=true",
        "trainer.epochs=2", "data.train_size=1000", "data.batch_size=96", "data.val_size=500",  # 1000 = 10 x 96 + 40
        "trainer.progress=false"])
    Run(recipe, verbose=False).execute()
    print(f"backend {backend or 'inductor'}: graphs {counters['stats']['unique_graphs']}, "
          f"frames {dict(counters['frames'])}, recompile-limit fallbacks "
          f"{sum(n for k, n in counters['unimplemented'].items() if 'recompile_limit' in k)}")


def resume(data: Path, runs: Path, deterministic: str, limit: int) -> None:
    """2 epochs straight against 1 epoch + --resume + 1 epoch (MNIST CNN with dropout): max |weight diff|."""
    common = [f"data.root={data}", f"logging.root={runs}", "trainer.progress=false", "scheduler.name=none",
              f"trainer.deterministic={deterministic}", f"trainer.limit_train_batches={limit}", "data.val_size=1000"]

    def train(name: str, *extra: str) -> Path:
        subprocess.run([sys.executable, "-m", "harness.train", "recipes/mnist.yaml", *common, f"logging.name={name}",
                        *extra], cwd=REPO, check=True, capture_output=True)
        return sorted((runs / name).iterdir())[-1]

    straight = train(f"straight-{deterministic}", "trainer.epochs=2")
    split = train(f"split-{deterministic}", "trainer.epochs=1")
    subprocess.run([sys.executable, "-m", "harness.train", str(split / "config.yaml"), "trainer.epochs=2", "--resume",
                    str(split / "checkpoints" / "last.pt")], cwd=REPO, check=True, capture_output=True)
    a = torch.load(straight / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(split / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"deterministic={deterministic} on {'cuda' if CUDA else 'cpu'}: max |straight - resumed| = {diff:.3e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    p = sub.add_parser("fake-data")
    p.add_argument("root", type=Path)
    p.add_argument("--small", action="store_true")
    p = sub.add_parser("sync-audit")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    sub.add_parser("nccl")
    sub.add_parser("loader-numerics")
    p = sub.add_parser("graphs")
    p.add_argument("data", type=Path)
    p.add_argument("runs", type=Path)
    p.add_argument("--backend", default=None, help="a Dynamo backend (eager: graphs without Inductor's compile time)")
    p = sub.add_parser("resume")
    p.add_argument("data", type=Path)
    p.add_argument("runs", type=Path)
    p.add_argument("deterministic", choices=("true", "false"))
    p.add_argument("--limit", type=int, default=100, help="training batches per epoch (default 100)")
    args = parser.parse_args(argv)
    if args.check == "fake-data":
        fake_data(args.root, args.small)
    elif args.check == "sync-audit":
        sync_audit(args.recipe, args.overrides)
    elif args.check == "nccl":
        nccl()
    elif args.check == "loader-numerics":
        loader_numerics()
    elif args.check == "graphs":
        graphs(args.data, args.runs, args.backend)
    else:
        resume(args.data, args.runs, args.deterministic, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
