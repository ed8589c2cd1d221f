"""What activation checkpointing saves and costs: one training step of `models.ResidualMLP`, with and
without `trainer.activation_checkpointing` (harness.core.activation_checkpointing), in the same process.

    python benchmarks/activation_checkpointing.py                      # width 256, depth 8, batch 1024, CPU
    python benchmarks/activation_checkpointing.py --device cuda --width 4096 --depth 16 --batch 4096

Memory: the bytes autograd keeps from the forward for the backward (every tensor a saved-tensor hook
sees), which is what checkpointing trades away; exact and the same on any device. On CUDA also the
allocator's peak during the step (`torch.cuda.max_memory_allocated`, after a reset), which includes the
weights, gradients and optimizer state. Time: the median of `--repeats` steps each, the two variants
alternated so a busy spell of the machine hits both; the ratio is checkpointed / plain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.core.activation_checkpointing import checkpoint_activations
from models import ResidualMLP


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    started = time.perf_counter()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 784, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    models = {}
    for name in ("plain", "checkpointed"):
        torch.manual_seed(0)
        model = ResidualMLP(width=args.width, depth=args.depth).to(device)
        if name == "checkpointed":
            checkpoint_activations(model.blocks)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    kept = {name: saved_bytes(model, x, y) for name, (model, _) in models.items()}
    peaks: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in models}
    for model, optimizer in models.values():
        step(model, optimizer, x, y)  # warm-up: optimizer state, allocator caches
    for _ in range(args.repeats):
        for name, (model, optimizer) in models.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(step(model, optimizer, x, y))
            if device.type == "cuda":
                peaks[name] = torch.cuda.max_memory_allocated(device) / 1e6
    params = sum(p.numel() for p in models["plain"][0].parameters())
    print(f"# ResidualMLP width {args.width}, depth {args.depth} ({params / 1e6:.2f} M parameters), "
          f"batch {args.batch}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} steps")
    print("| variant | kept for backward [MB] | step [ms] |" + (" peak allocated [MB] |" if peaks else ""))
    print("|---|---|---|" + ("---|" if peaks else ""))
    for name in models:
        row = f"| {name} | {kept[name] / 1e6:.1f} | {1000 * statistics.median(times[name]):.1f} |"
        print(row + (f" {peaks[name]:.1f} |" if peaks else ""))
    ratio = statistics.median(times["checkpointed"]) / statistics.median(times["plain"])
    print(f"checkpointed / plain: kept {kept['checkpointed'] / kept['plain']:.3f}, step time {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
