"""What the harness costs on a transformer: recipes/shakespeare_char.yaml trained by the Trainer and by hand.

    HARNESS_DATA_DIR=../shared/data python benchmarks/gpt_overhead.py --threads 1        # 8 rounds of 250 steps
    HARNESS_DATA_DIR=../shared/data python benchmarks/gpt_overhead.py --steps 20 --rounds 2 --threads 1   # smoke

One round = `--steps` optimizer steps of the recipe's GPT (4 layers, 128 wide, batch 12 x 64 characters) and
one validation on 20 batches (its `limit_val_batches`, nanoGPT's eval_iters), as the recipe trains between
two validations. Both contenders start from the same weights and draw the same windows (the recipe's
RandomWindows and SequentialWindows), with AdamW, the same warmup + cosine learning rate and gradient clipping:

  harness  `Trainer.fit` built from the recipe by the recipe layer (`build_data`, `build_trainer`), one round
           per `fit` call (max_steps raised by --steps each time): token cross-entropy, perplexity, bits
           per character and token accuracy on the device, TensorBoard + JSONL logging to a temporary
           folder, `trainer.throughput` (FLOPs counted on the first step, tokens/s and peak memory at each
           validation), the progress line of a non-terminal run. No checkpoints and no text samples: the
           hand-written loop writes no files and generates no text.
  raw      the same work written by hand, nanoGPT's loop: forward, cross-entropy, backward, clip_grad_norm_,
           step, zero_grad(set_to_none=True), nanoGPT's get_lr for the learning rate, the loss summed on the
           device and read every 50 steps (the harness's progress sync); validation by hand (summed NLL,
           token count, correct argmax).

Method: one process. Each contender first runs `--warmup` untimed rounds (default none: the default 8 rounds
are the recipe's whole run, 2000 steps, first-call costs included). Then `--rounds` rounds, round-robin, the
starting contender alternating, so a slow spell of a shared machine hits both alike. Reported: the median
round time of each, tokens/s (training tokens of a round / its wall time, validation included), and the paired
ratio: the median over rounds of harness / raw in the same round (> 1: the harness is slower), on the wall
clock and on the process's CPU clock (`time.process_time`, which other jobs on a shared machine disturb far
less; with one torch thread it is the work done). The validation loss of the last round, and after it
(untimed) on the whole validation split, show that both did the same work.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "shakespeare_char.yaml"
LOG_EVERY = 50  # steps between loss reads: the harness's log_every_n_steps default


def load(steps: int, total_steps: int, data_root: str | None) -> Any:
    """The recipe, with the run long enough for every round (the schedule spans all of them)."""
    from harness.recipe.schema import load_recipe

    overrides = [f"trainer.max_steps={total_steps}", f"trainer.val_every_n_steps={steps}", "trainer.device=cpu",
                 "logging.sample=null", "trainer.progress=true"]
    if total_steps <= 100:  # a smoke test shorter than the recipe's warmup; nanoGPT's first lr: 1 / (warmup + 1)
        warmup = total_steps // 2
        overrides += [f"scheduler.warmup_steps={warmup}", f"scheduler.warmup_start_factor={1 / (warmup + 1)}"]
    return load_recipe(RECIPE, overrides + ([f"data.root={data_root}"] if data_root else []))


class Harness:
    """The recipe's Trainer, minus checkpoints; `fit` to `steps` more optimizer steps per round."""

    def __init__(self, recipe: Any, steps: int) -> None:
        from harness.core.callbacks import ModelCheckpoint
        from harness.recipe.build import build_model, build_trainer
        from harness.recipe.data import build_data

        self.steps = steps
        device = torch.device("cpu")
        self.data = build_data(recipe.data, device, recipe.trainer.seed)
        self.folder = tempfile.TemporaryDirectory(prefix="harness-gpt-bench-")
        torch.manual_seed(recipe.trainer.seed)
        self.trainer = build_trainer(recipe, build_model(recipe.model), self.data, Path(self.folder.name), device)
        self.trainer.callbacks = [cb for cb in self.trainer.callbacks if not isinstance(cb, ModelCheckpoint)]

    def whole_split_loss(self) -> float:
        return self.trainer.evaluate(self.data.test)["loss"]  # the test pass: no batch limit

    def round(self) -> float:
        """One round; returns the validation loss."""
        sink = io.StringIO()  # the progress line of each validation, kept off the table
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            self.trainer.fit(self.data.train, self.data.val, max_steps=self.trainer.global_step + self.steps,
                             val_every_n_steps=self.steps)
        return self.trainer.history[-1]["val/loss"]


class ByHand:
    """nanoGPT's training loop over the same windows, written out."""

    def __init__(self, recipe: Any, steps: int) -> None:
        from harness.recipe.build import build_model
        from harness.recipe.data import build_data

        r, t = recipe, recipe.trainer
        self.steps, self.val_batches, self.clip = steps, t.limit_val_batches, t.grad_clip_norm
        self.data = build_data(r.data, torch.device("cpu"), t.seed)
        torch.manual_seed(t.seed)
        self.model = build_model(r.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": r.optim.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # nanoGPT's decay rule
        self.optimizer = torch.optim.AdamW(groups, lr=r.optim.lr, betas=tuple(r.optim.betas))
        self.lr, self.min_lr = r.optim.lr, r.scheduler.min_lr
        self.warmup, self.decay_steps = r.scheduler.warmup_steps, t.max_steps
        self.step_count = 0

    def get_lr(self, it: int) -> float:
        """nanoGPT's train.py."""
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        if it > self.decay_steps:
            return self.min_lr
        ratio = (it - self.warmup) / (self.decay_steps - self.warmup)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)

    def round(self) -> float:
        model, optimizer, train = self.model, self.optimizer, self.data.train
        model.train()
        train.set_epoch(self.step_count // self.steps)  # the harness's pass number: the same windows
        loss_sum = torch.zeros(())
        for step, (x, y) in enumerate(islice(train, self.steps)):
            for group in optimizer.param_groups:
                group["lr"] = self.get_lr(self.step_count)
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            self.step_count += 1
            if (step + 1) % LOG_EVERY == 0:
                loss.item()  # what a progress print reads: a host sync every LOG_EVERY steps, as in the harness
        loss_sum.item()
        return self.validate()

    def whole_split_loss(self) -> float:
        return self.validate(batches=None)

    @torch.no_grad()
    def validate(self, batches: int | None = -1) -> float:
        """Mean token NLL over the first `limit_val_batches` validation batches (-1), or all of them (None)."""
        self.model.eval()
        nll = torch.zeros((), dtype=torch.float64)
        tokens = correct = torch.zeros((), dtype=torch.int64)
        for x, y in islice(self.data.val, self.val_batches if batches == -1 else batches):
            logits = self.model(x)
            flat, targets = logits.reshape(-1, logits.size(-1)), y.reshape(-1)
            nll += F.cross_entropy(flat, targets, ignore_index=-100, reduction="sum").double()
            counted = targets != -100
            tokens = tokens + counted.sum()
            correct = correct + ((flat.argmax(-1) == targets) & counted).sum()
        self.model.train()
        return (nll / tokens).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps per round (default 250)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per contender (default 8)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds per contender first (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data-root", default=None, help="default: $HARNESS_DATA_DIR, else ./data")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # `models/` when run from a checkout without `pip install -e .`
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    recipe = load(args.steps, args.steps * (args.warmup + args.rounds), args.data_root)
    command = "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]) if argv is None else str(argv)
    print(f"command: {command}\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} "
          f"cores; load average before {os.getloadavg()[0]:.2f}", flush=True)
    contenders = {"harness": Harness(recipe, args.steps), "raw": ByHand(recipe, args.steps)}
    for contender in contenders.values():
        for _ in range(args.warmup):
            contender.round()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    losses: dict[str, float] = {}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[: r % 2]:
            gc.collect()  # outside the clock
            started, started_cpu = time.perf_counter(), time.process_time()
            losses[name] = contenders[name].round()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
            print(f"  round {r + 1}/{args.rounds} {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU",
                  file=sys.stderr, flush=True)
    tokens = args.steps * recipe.data.batch_size * recipe.data.block_size
    paired = {clock: statistics.median(h / w for h, w in zip(values["harness"], values["raw"], strict=True))
              for clock, values in (("wall", times), ("CPU", cpu))}
    print(f"load average after {os.getloadavg()[0]:.2f}\n")
    whole = {name: contender.whole_split_loss() for name, contender in contenders.items()}  # untimed
    print("| contender | median round [s] | min-max [s] | tokens/s | median round, CPU [s] | val loss, last round "
          "| whole validation split |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {tokens / median:,.0f} "
              f"| {statistics.median(cpu[name]):.2f} | {losses[name]:.4f} | {whole[name]:.4f} |")
    print(f"\nharness / raw, paired median over {args.rounds} rounds of {args.steps} steps: {paired['wall']:.3f} wall, "
          f"{paired['CPU']:.3f} CPU (the tokens/s ratio raw / harness)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
