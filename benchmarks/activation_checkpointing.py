"""What activation checkpointing saves and costs: training steps with and without
`trainer.activation_checkpointing` (harness.core.activation_checkpointing on the model's `blocks`), each
variant in a process of its own, so that each process's memory high-water mark is that variant's alone.

    python benchmarks/activation_checkpointing.py --threads 1             # GPT: 6 blocks, 192 wide, 32 x 256 tokens
    python benchmarks/activation_checkpointing.py --model residual_mlp --threads 1   # width 256, depth 8, batch 1024
    python benchmarks/activation_checkpointing.py --device cuda --batch 64 --block-size 1024 --n-layer 12 --n-embd 768

Models: `gpt` (models.gpt.GPT, nanoGPT's: --n-layer blocks of --n-embd with --n-head heads, --batch windows of
--block-size tokens over a 65-token vocabulary, random tokens: the memory and time do not depend on the text)
or `residual_mlp` (models.ResidualMLP, --width, --depth, --batch images of 784 features). One step: forward,
cross-entropy, backward, AdamW step, zero_grad(set_to_none=True).

Memory, three figures per variant:
- kept for backward: the bytes of the tensors autograd keeps from the forward for the backward (every
  tensor a saved-tensor hook sees): what checkpointing trades away; exact, the same on any device.
- step peak: the most tensor memory a training step holds at once above what was live before it (the
  weights, the optimizer state, the batch): activations, gradients, temporaries. On CUDA the allocator's
  `max_memory_allocated` less the memory allocated before the step; on a CPU, where torch keeps no
  allocator statistics, the running sum of the CPU allocator's allocations and frees that
  `torch.profiler` (`profile_memory=True`) records over one step, after the timed ones.
- peak resident set growth (CPU): the process's peak resident set (`ru_maxrss`) less its resident set just
  before the first step; the first step also creates the optimizer state. The measuring processes run with
  glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 128 KiB: left dynamic, glibc raises it as large blocks are freed
  and then keeps freed tensor memory in its heap, so the resident set keeps an earlier high-water mark of
  its own and no longer follows the tensors (measured here: the ResidualMLP's growth was 166 MB plain and
  176 MB checkpointed with the dynamic threshold, 142 MB and 86 MB with it fixed).
Time: the median of the `--steps` steps after `--warmup` untimed ones; with `--rounds` R each variant runs in
R processes, alternated (plain, checkpointed, plain, ...), so that a slow spell of a shared machine hits both.
The ratio is checkpointed / plain, of the medians over all timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.core.activation_checkpointing import checkpoint_activations
from harness.core.memory import bytes_saved_for_backward
from models import ResidualMLP
from models.gpt import GPT

VARIANTS = ("plain", "checkpointed")
VOCABULARY = 65  # tiny Shakespeare's characters


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps from one forward for its backward (gradients cleared after)."""
    kept = bytes_saved_for_backward(lambda: loss_of(model, x, y))
    model.zero_grad(set_to_none=True)
    return kept


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten())


def build(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model (seeded: both variants start from the same weights) and one batch of inputs and targets."""
    torch.manual_seed(0)
    if args.model == "gpt":
        model: nn.Module = GPT(vocab_size=VOCABULARY, block_size=args.block_size, n_layer=args.n_layer,
                               n_head=args.n_head, n_embd=args.n_embd)
        tokens = torch.randint(0, VOCABULARY, (args.batch, args.block_size + 1))
        x, y = tokens[:, :-1], tokens[:, 1:]
    else:
        model = ResidualMLP(width=args.width, depth=args.depth)
        x, y = torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,))
    return model.to(device), x.to(device), y.to(device)


def resident_bytes() -> int | None:
    """The process's resident set now (Linux: /proc/self/statm), None where that file does not exist."""
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        return None
    return int(statm.read_text().split()[1]) * resource.getpagesize()


def peak_resident_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # ru_maxrss: KiB on Linux, bytes on macOS


def step_peak_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    """The most tensor memory one step holds at once above what was live before it."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        before = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        step(model, optimizer, x, y)
        return torch.cuda.max_memory_allocated(x.device) - before
    from torch.profiler import ProfilerActivity, profile  # only the CPU measure needs it

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, optimizer, x, y)
    # Each "[memory]" record is one allocation (+bytes) or free (-bytes) of the CPU allocator, in time order.
    # (kineto_results: the profiler's raw records; its public tables sum memory per operator, not over time.)
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    held = peak = 0
    for record in records:
        held += record.nbytes()
        peak = max(peak, held)
    return peak


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    started = time.perf_counter()
    loss_of(model, x, y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process: its step times, peak memory and the bytes kept for the backward."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, x, y = build(args, device)
    if args.variant == "checkpointed":
        checkpoint_activations(model.blocks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = resident_bytes() if device.type == "cpu" else None
    times = [step(model, optimizer, x, y) for _ in range(args.warmup + args.steps)][args.warmup:]
    growth = peak_resident_bytes() - before if before is not None else None
    # after the timed steps (and the resident set's peak): neither holds more memory than a step
    step_peak = step_peak_bytes(model, optimizer, x, y)
    kept = saved_bytes(model, x, y)
    return {"variant": args.variant, "times": times, "step_peak": step_peak, "growth": growth, "kept": kept,
            "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def run_variant(argv: list[str], variant: str) -> dict[str, Any]:
    """`measure` in a fresh process: its memory high-water mark starts clean."""
    command = [sys.executable, __file__, *argv, "--variant", variant]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # see the module's docstring
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(args: argparse.Namespace, parameters: int, threads: int) -> str:
    if args.model == "gpt":
        shape = (f"GPT {args.n_layer} blocks, {args.n_embd} wide, {args.n_head} heads ({parameters / 1e6:.2f} M "
                 f"parameters), batch {args.batch} x {args.block_size} tokens")
    else:
        shape = (f"ResidualMLP width {args.width}, depth {args.depth} ({parameters / 1e6:.2f} M parameters), "
                 f"batch {args.batch}")
    return (f"# {shape}, {args.device}, torch {torch.__version__}, {threads} thread(s); median of "
            f"{args.steps} steps after {args.warmup} warm-up, {args.rounds} process(es) per variant")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("gpt", "residual_mlp"), default="gpt")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 windows (gpt), 1024 images (mlp)")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (optimizer state, caches)")
    parser.add_argument("--rounds", type=int, default=1, help="processes per variant, alternated")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set in the measuring processes
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 32 if args.model == "gpt" else 1024
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.variant is not None:  # a measuring process
        print(json.dumps(measure(args)))
        return 0
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(run_variant(argv, variant))
    first = results["plain"][0]
    print(describe(args, first["parameters"], first["threads"]))
    print("| variant | kept for backward [MB] | step peak [MB] | peak resident set growth [MB] | step [ms] |")
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for variant, runs in results.items():
        # the largest over the variant's processes: the high-water mark is what must fit
        growths = [r["growth"] for r in runs if r["growth"] is not None]
        summary[variant] = {"kept": runs[0]["kept"], "step peak": max(r["step_peak"] for r in runs),
                            "resident growth": max(growths) if growths else None,
                            "step time": statistics.median(t for r in runs for t in r["times"])}
        row = summary[variant]
        growth = "n/a" if row["resident growth"] is None else f"{row['resident growth'] / 1e6:.1f}"
        print(f"| {variant} | {row['kept'] / 1e6:.1f} | {row['step peak'] / 1e6:.1f} | {growth} | "
              f"{1000 * row['step time']:.1f} |")
    plain, checkpointed = summary["plain"], summary["checkpointed"]
    ratios = [f"{key} {checkpointed[key] / plain[key]:.3f}" for key in plain
              if plain[key] and checkpointed[key] is not None]
    print(f"checkpointed / plain: {', '.join(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
