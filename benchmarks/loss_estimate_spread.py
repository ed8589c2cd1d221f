"""How far a validation loss estimated on a few random batches lies from the loss on the whole split.

    HARNESS_DATA_DIR=../shared/data python benchmarks/loss_estimate_spread.py recipes/shakespeare_char.yaml \\
        --checkpoint runs/shakespeare_char/<run>/checkpoints/best.pt --threads 1

nanoGPT reports its validation loss as `estimate_loss` computes it: the mean of `eval_iters` (20 in its CPU
configuration) batch losses, each batch `batch_size` windows of `block_size` characters at random offsets of
the validation text. The harness validates during training on a fixed handful of windows too, and scores the
whole validation split (every character once) at the end. Two figures of one model are then one number from
different samples; this script measures what separates them. For a checkpoint it computes:

  whole    the loss over every character of the validation split (`harness.evaluate`'s figure);
  spread   `--repeats` independent estimates as nanoGPT's `estimate_loss` makes them (`--batches` batches of
           `data.eval_batch_size` random windows each, offsets drawn as nanoGPT's `get_batch` draws them):
           their mean, standard deviation, 2.5 / 50 / 97.5 % quantiles, and the share at or below `--at`.

The estimates come from one loss per window (each window is scored once, all repeats reuse the scored windows:
a window's loss does not depend on which estimate draws it), so the script costs one forward pass per distinct
window drawn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.data.text_chars import load_text_chars, resolve_text_path  # noqa: E402
from harness.recipe.parts import build_evaluation, setup  # noqa: E402
from harness.recipe.schema import load_recipe  # noqa: E402
from harness.workflows.evaluation_text import token_metrics  # noqa: E402


def window_losses(model: torch.nn.Module, ids: torch.Tensor, starts: torch.Tensor, block_size: int,
                  batch_size: int) -> torch.Tensor:
    """The mean token loss of each window `ids[s : s + T]` -> `ids[s + 1 : s + T + 1]`, one per start."""
    offsets = torch.arange(block_size + 1)
    losses = []
    with torch.no_grad():
        for chunk in starts.split(batch_size):
            windows = ids[chunk[:, None] + offsets]
            logits = model(windows[:, :-1])
            token = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="none")
            losses.append(token.view(len(chunk), block_size).mean(dim=1))
    return torch.cat(losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batches", type=int, default=20, help="batches per estimate (nanoGPT's eval_iters)")
    parser.add_argument("--repeats", type=int, default=200, help="independent estimates")
    parser.add_argument("--at", type=float, default=1.886, help="report the share of estimates at or below this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-root", default=os.environ.get("HARNESS_DATA_DIR"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.recipe, [*([f"data.root={args.data_root}"] if args.data_root else []),
                                       "trainer.device=cpu", "trainer.progress=false"])
    parts = build_evaluation(recipe, setup(recipe), args.checkpoint, "test", token_metrics)
    started = time.perf_counter()
    whole = parts.evaluator.validate(parts.loader, prefix="test")
    whole_tokens = parts.evaluator.last_pass_samples

    model = parts.model.eval()
    # The validation text in order (the scoring loader holds it cut into shuffled windows)
    text = load_text_chars(resolve_text_path(recipe.data.path or "", recipe.data.root), recipe.data.encoding)
    ids = text.split()[1]
    block, batch = recipe.data.block_size, recipe.data.eval_batch_size
    assert block is not None
    generator = torch.Generator().manual_seed(args.seed)
    # nanoGPT's get_batch: offsets uniform over 0 .. len - T - 1
    starts = torch.randint(len(ids) - block, (args.repeats, args.batches, batch), generator=generator)
    distinct, where = starts.flatten().unique(return_inverse=True)
    losses = window_losses(model, ids, distinct, block, 256)[where].view(args.repeats, args.batches, batch)
    estimates = losses.mean(dim=(1, 2)).tolist()  # each batch's mean over equal windows, then over batches
    quantiles = statistics.quantiles(estimates, n=40, method="inclusive")  # 2.5 % steps, within the range
    share = sum(e <= args.at for e in estimates) / len(estimates)
    print(f"checkpoint {args.checkpoint}")
    print(f"whole validation split: loss {whole['test/loss']:.4f} over {whole_tokens:,} characters")
    print(f"{args.repeats} estimates of {args.batches} batches x {batch} random windows of {block} characters "
          f"({distinct.numel():,} distinct windows scored):")
    print(f"  mean {statistics.fmean(estimates):.4f}, std {statistics.stdev(estimates):.4f}, "
          f"2.5 % {quantiles[0]:.4f}, median {statistics.median(estimates):.4f}, 97.5 % {quantiles[-1]:.4f}, "
          f"min {min(estimates):.4f}, max {max(estimates):.4f}")
    print(f"  at or below {args.at}: {share:.1%}   ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
