"""What the harness costs per epoch, against the loops people write by hand and two frameworks.

    HARNESS_DATA_DIR=../shared/data python benchmarks/overhead.py              # MLP and CNN, 5 rounds
    python benchmarks/overhead.py --model mlp --quick --repeats 2              # smoke test, seconds
    python benchmarks/overhead.py --device cuda --precision bf16 --json out.json

One epoch = one training epoch over the 55k training images (batch 128) + one validation pass
over the 5k held-out images (batch 1000), as `python -m harness.train` does it. The contenders,
all training the same model from the same initial weights with AdamW(lr=1e-3) and batch 128:

  harness        `Trainer.fit` one epoch at a time, built from the recipe by `harness.build` (the
                 CLI's parts): TensorLoader data, acc + macro F1, TensorBoard + JSONL logging to a
                 temporary folder, the progress line of a non-terminal run. No checkpoints.
  raw            the same work written by hand: the same TensorLoader batches, forward / backward /
                 step / zero_grad, the train loss summed on the device and read every 50 steps (the
                 harness's progress sync), validation with argmax==target counts and a bincount
                 confusion matrix for macro F1. Harness / raw is the harness's pure overhead.
  torchvision    the loop most users write (the PyTorch examples' MNIST script): datasets.MNIST with
                 ToTensor + Normalize through a DataLoader, shuffle=True; num_workers=0 on CPU and
                 1 worker + pin_memory on CUDA, as the example does. Same loop body as raw.
  raw-dataloader the raw loop fed by the data path Lightning and Ignite get below (DataLoader over a
                 TensorDataset of pre-normalised floats): separates their data path from their engine.
  lightning      L.Trainer(logger=False, no progress bar / checkpointing / summary) on a LightningModule
                 that logs train_loss and val_loss / val_acc, fed by DataLoader(TensorDataset(...)).
  ignite         create_supervised_trainer / create_supervised_evaluator(Accuracy, Loss) run on
                 every EPOCH_COMPLETED, same DataLoaders as Lightning.

Method: everything runs in ONE process. Each contender first runs `--epochs-warmup` untimed epochs
(the first epoch pays lazy imports, allocator growth, kernel selection). Then `--repeats` rounds:
in each round every contender runs one timed epoch, round-robin, the starting contender rotating
from round to round, so a slow spell of a shared machine hits all contenders alike. The table
gives the median epoch time of each contender, its ratio to `raw` (median over median), and the
"paired" ratio: the median over rounds of (contender's epoch / raw's epoch in the same round),
which cancels drifts in machine speed. On CUDA the device is synchronised before each clock read.

How the frameworks are timed in-process: Lightning reuses one `L.Trainer`, raising
`fit_loop.max_epochs` by one before each `fit` call; its epoch is timed by a callback from
`on_train_epoch_start` to `on_train_epoch_end` (validation runs in between), which leaves out the
per-`fit` set-up and the 2-batch sanity check. The whole `fit` call is reported too. Ignite's
`trainer.run(loader, max_epochs=1)` restarts a finished engine; its whole call is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"mlp": REPO / "recipes" / "mnist_mlp.yaml", "cnn": REPO / "recipes" / "mnist.yaml"}
CONTENDERS = ("harness", "raw", "torchvision", "raw-dataloader", "lightning", "ignite")
LR = 1e-3
EVAL_BATCH = 1000  # validation batch, the recipes' data.eval_batch_size
VAL_SIZE = 5000  # held out of the 60k training images, the recipes' data.val_size
LOG_EVERY = 50  # steps between loss reads: the harness's log_every_n_steps default
QUICK_TRAIN_BATCHES, QUICK_VAL_BATCHES = 40, 2  # --quick: a fraction of an epoch


@dataclass
class Setup:
    """What every contender of one model shares."""

    model_name: str
    model_args: dict[str, Any]
    device: torch.device
    precision: str  # "32" or "bf16"
    batch_size: int
    seed: int
    train_batches: int | None  # None: whole epochs
    val_batches: int | None
    data_root: str | None

    def new_model(self) -> nn.Module:
        """The recipe's model with the same initial weights for every contender."""
        from models import MODELS

        torch.manual_seed(self.seed)
        return MODELS[self.model_name](**self.model_args).to(self.device)

    def new_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class Epoch:
    wall: float  # seconds, time.perf_counter
    cpu: float  # seconds of CPU time of the whole process, all threads (time.process_time)
    val_acc: float
    extra: dict[str, tuple[float, float]] = field(default_factory=dict)  # other (wall, cpu) clocks of the epoch


class Clock:
    """Wall and process-CPU seconds of a block; on CUDA the device is synchronised at both ends."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self.setup.sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.setup.sync()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __enter__(self) -> Clock:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- data
_CACHE: dict[str, Any] = {}


def mnist_split(setup: Setup) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The MNIST training split as tensors and the recipes' seeded 55k / 5k hold-out indices."""
    if "split" not in _CACHE:
        from harness.data import load_dataset, train_val_split

        full = load_dataset("mnist", setup.data_root, train=True, download=False)
        _CACHE["split"] = (full, *train_val_split(len(full), VAL_SIZE, setup.seed))
    return _CACHE["split"]


def float_tensors(setup: Setup) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    """Pre-normalised float32 train / val TensorDatasets on the CPU (Lightning's and Ignite's input)."""
    if "float" not in _CACHE:
        from torch.utils.data import TensorDataset

        full, train_idx, val_idx = mnist_split(setup)
        mean, std = full.mean[0], full.std[0]
        x = (full.images.float() / 255 - mean) / std  # what ToTensor() + Normalize() give
        _CACHE["float"] = (TensorDataset(x[train_idx], full.targets[train_idx]),
                           TensorDataset(x[val_idx], full.targets[val_idx]))
    return _CACHE["float"]


def tensor_dataloaders(setup: Setup) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader

    train, val = float_tensors(setup)
    return DataLoader(train, batch_size=setup.batch_size, shuffle=True), DataLoader(val, batch_size=EVAL_BATCH)


# -------------------------------------------------------------------------------- the hand-written loop
def train_by_hand(setup: Setup, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any]) -> float:
    """One training epoch as people write it; returns the mean training loss."""
    model.train()
    loss_sum = torch.zeros((), device=setup.device)
    samples = 0
    for step, (x, y) in enumerate(islice(batches, setup.train_batches)):
        x, y = x.to(setup.device), y.to(setup.device)  # no-op for batches already on the device
        with setup.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach() * y.shape[0]
        samples += y.shape[0]
        if (step + 1) % LOG_EVERY == 0:
            loss.item()  # what a progress print reads: a host sync every LOG_EVERY steps, as in the harness
    return loss_sum.item() / samples


@torch.no_grad()
def validate_by_hand(setup: Setup, model: nn.Module, batches: Iterable[Any], num_classes: int = 10) -> dict[str, float]:
    """Validation loss, accuracy and macro F1 with plain tensor ops (the harness's metrics, by hand)."""
    model.eval()
    loss_sum = torch.zeros((), device=setup.device)
    correct = torch.zeros((), dtype=torch.int64, device=setup.device)
    confmat = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=setup.device)
    samples = 0
    for x, y in islice(batches, setup.val_batches):
        x, y = x.to(setup.device), y.to(setup.device)
        with setup.autocast():
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y) * y.shape[0]
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        confmat += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
        samples += y.shape[0]
    cm = confmat.view(num_classes, num_classes).double()
    f1 = (2 * cm.diag() / (cm.sum(0) + cm.sum(1)).clamp_min(1)).mean()  # per-class 2TP/(2TP+FP+FN)
    return {"loss": loss_sum.item() / samples, "acc": correct.item() / samples, "f1": f1.item()}


class HandLoop:
    """`raw`, `torchvision` and `raw-dataloader`: the hand-written loop over some train / val batches."""

    def __init__(self, setup: Setup, train: Any, val: Any) -> None:
        self.setup, self.train, self.val = setup, train, val
        self.model = setup.new_model()
        self.optimizer = setup.new_optimizer(self.model)
        self.epochs = 0

    def epoch(self) -> Epoch:
        with Clock(self.setup) as clock:
            if hasattr(self.train, "set_epoch"):
                self.train.set_epoch(self.epochs)
            train_by_hand(self.setup, self.model, self.optimizer, self.train)
            scores = validate_by_hand(self.setup, self.model, self.val)
        self.epochs += 1
        return Epoch(clock.wall, clock.cpu, scores["acc"])


def make_raw(setup: Setup) -> HandLoop:
    from harness.data import TensorLoader

    full, train_idx, val_idx = mnist_split(setup)

    def loader(split: Any, batch_size: int, shuffle: bool) -> TensorLoader:  # as in the README
        return TensorLoader(split.images, split.targets, batch_size, mean=split.mean, std=split.std,
                            shuffle=shuffle, seed=setup.seed, device=setup.device)

    return HandLoop(setup, loader(full.take(train_idx), setup.batch_size, True),
                    loader(full.take(val_idx), EVAL_BATCH, False))


def make_torchvision(setup: Setup) -> HandLoop:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from harness.data import resolve_data_root

    _, train_idx, val_idx = mnist_split(setup)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    mnist = datasets.MNIST(str(resolve_data_root(setup.data_root)), train=True, download=False, transform=transform)
    # pytorch/examples mnist/main.py: {'num_workers': 1, 'pin_memory': True} on CUDA, the defaults (0) otherwise
    cuda = {"num_workers": 1, "pin_memory": True} if setup.device.type == "cuda" else {}
    train = DataLoader(Subset(mnist, train_idx.tolist()), batch_size=setup.batch_size, shuffle=True, **cuda)
    val = DataLoader(Subset(mnist, val_idx.tolist()), batch_size=EVAL_BATCH, **cuda)
    return HandLoop(setup, train, val)


def make_raw_dataloader(setup: Setup) -> HandLoop:
    return HandLoop(setup, *tensor_dataloaders(setup))


# ------------------------------------------------------------------------------------------ harness
class HarnessContender:
    """The harness as `python -m harness.train` builds it, minus checkpoints, one `fit` epoch at a time."""

    def __init__(self, setup: Setup) -> None:
        from harness.core.callbacks import ModelCheckpoint
        from harness.recipe.build import build_model, build_trainer
        from harness.recipe.data import build_data
        from harness.recipe.schema import load_recipe, validate_recipe

        overrides = [f"optim.lr={LR}", "optim.weight_decay=0", "scheduler.name=none",
                     f"data.batch_size={setup.batch_size}", f"data.eval_batch_size={EVAL_BATCH}",
                     f"data.val_size={VAL_SIZE}", f"trainer.device={setup.device}",
                     f"trainer.precision={setup.precision}", f"trainer.seed={setup.seed}",
                     f"trainer.log_every_n_steps={LOG_EVERY}", "trainer.progress=true"]
        if setup.data_root is not None:
            overrides.append(f"data.root={setup.data_root}")
        if setup.train_batches is not None:
            overrides += [f"trainer.limit_train_batches={setup.train_batches}",
                          f"trainer.limit_val_batches={setup.val_batches}"]
        recipe = load_recipe(RECIPES[setup.model_name], overrides)
        recipe = validate_recipe({**recipe.to_dict(), "metrics": {"acc": {"type": "accuracy"},
                                                                  "f1": {"type": "f1", "average": "macro"}}})
        self.setup = setup
        self.data = build_data(recipe.data, setup.device, setup.seed)
        self.log_dir = tempfile.TemporaryDirectory(prefix="harness-bench-")
        torch.manual_seed(setup.seed)
        self.trainer = build_trainer(recipe, build_model(recipe.model), self.data, Path(self.log_dir.name),
                                     setup.device)
        # The benchmark compares loops; checkpoint files are not part of the other contenders' work.
        self.trainer.callbacks = [cb for cb in self.trainer.callbacks if not isinstance(cb, ModelCheckpoint)]

    def epoch(self) -> Epoch:
        trainer = self.trainer
        # stdout/stderr to a buffer: the one summary line per epoch of a non-terminal run, kept off the table
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), Clock(self.setup) as clock:
            trainer.fit(self.data.train, self.data.val, epochs=trainer.epoch + 1)
        return Epoch(clock.wall, clock.cpu, trainer.history[-1]["val/acc"])


# ------------------------------------------------------------------------------------------ Lightning
class LightningContender:
    """One `L.Trainer` reused: `fit_loop.max_epochs` + 1 and `fit` again for every epoch."""

    def __init__(self, setup: Setup) -> None:
        import lightning as L

        logging.getLogger("lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        self.setup = setup
        model, new_optimizer = setup.new_model(), setup.new_optimizer

        class Classifier(L.LightningModule):  # the docs' pattern
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                loss = F.cross_entropy(self.model(x), y)
                self.log("train_loss", loss)
                return loss

            def validation_step(self, batch: Any, batch_idx: int) -> None:
                x, y = batch
                logits = self.model(x)
                self.log("val_loss", F.cross_entropy(logits, y))
                self.log("val_acc", (logits.argmax(1) == y).float().mean())

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return new_optimizer(self)

        clock = self.clock = Clock(setup)

        class EpochClock(L.Callback):
            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                clock.start()

            def on_train_epoch_end(self, trainer: Any, module: Any) -> None:  # after validation
                clock.stop()

        limits = {}
        if setup.train_batches is not None:
            limits = {"limit_train_batches": setup.train_batches, "limit_val_batches": setup.val_batches}
        self.module = Classifier()
        self.trainer = L.Trainer(
            max_epochs=0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
            enable_model_summary=False, accelerator="gpu" if setup.device.type == "cuda" else "cpu", devices=1,
            precision="bf16-mixed" if setup.precision == "bf16" else "32-true", callbacks=[EpochClock()], **limits,
        )
        self.train, self.val = tensor_dataloaders(setup)

    def epoch(self) -> Epoch:
        self.trainer.fit_loop.max_epochs += 1
        with Clock(self.setup) as whole:
            self.trainer.fit(self.module, self.train, self.val)
        acc = float(self.trainer.callback_metrics["val_acc"])
        return Epoch(self.clock.wall, self.clock.cpu, acc, {"whole fit call": (whole.wall, whole.cpu)})


# --------------------------------------------------------------------------------------------- Ignite
class IgniteContender:
    """`create_supervised_trainer` + an evaluator run on every EPOCH_COMPLETED, as in Ignite's docs."""

    def __init__(self, setup: Setup) -> None:
        from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
        from ignite.metrics import Accuracy, Loss

        self.setup = setup
        model = setup.new_model()

        def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # Ignite's amp_mode is fp16 only
            with setup.autocast():
                return m(x).float()

        self.train, self.val = tensor_dataloaders(setup)
        self.trainer = create_supervised_trainer(model, setup.new_optimizer(model), nn.CrossEntropyLoss(),
                                                 device=setup.device, model_fn=forward)
        self.evaluator = create_supervised_evaluator(
            model, metrics={"acc": Accuracy(), "loss": Loss(nn.CrossEntropyLoss())}, device=setup.device,
            model_fn=forward)

        @self.trainer.on(Events.EPOCH_COMPLETED)
        def validate(engine: Any) -> None:
            self.evaluator.run(self.val, epoch_length=setup.val_batches)

    def epoch(self) -> Epoch:
        with Clock(self.setup) as clock:
            self.trainer.run(self.train, max_epochs=1, epoch_length=self.setup.train_batches)  # restarts when done
        return Epoch(clock.wall, clock.cpu, self.evaluator.state.metrics["acc"])


FACTORIES: dict[str, Callable[[Setup], Any]] = {
    "harness": HarnessContender,
    "raw": make_raw,
    "torchvision": make_torchvision,
    "raw-dataloader": make_raw_dataloader,
    "lightning": LightningContender,
    "ignite": IgniteContender,
}
DATA_PATHS = {
    "harness": "TensorLoader",
    "raw": "TensorLoader",
    "torchvision": "datasets.MNIST + DataLoader",
    "raw-dataloader": "DataLoader(TensorDataset)",
    "lightning": "DataLoader(TensorDataset)",
    "ignite": "DataLoader(TensorDataset)",
}
MODULES = {"lightning": "lightning", "ignite": "ignite"}


def installed(name: str) -> bool:
    import importlib.util

    return name not in MODULES or importlib.util.find_spec(MODULES[name]) is not None


# --------------------------------------------------------------------------------------------- runner
def rounds(contenders: dict[str, Any], repeats: int) -> Iterator[tuple[int, str, Any]]:
    """Round-robin, the first contender of each round rotating: (round, name, contender)."""
    names = list(contenders)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            yield r, name, contenders[name]


def bench_model(setup: Setup, names: list[str], repeats: int, warmup: int) -> dict[str, list[Epoch]]:
    contenders = {}
    for name in names:
        contenders[name] = FACTORIES[name](setup)
        for _ in range(warmup):
            gc.collect()
            first = contenders[name].epoch()
            print(f"  {setup.model_name} warm-up {name}: {first.wall:.2f} s", file=sys.stderr, flush=True)
    times: dict[str, list[Epoch]] = {name: [] for name in names}
    for r, name, contender in rounds(contenders, repeats):
        gc.collect()  # outside the clock: garbage from another contender is not this one's cost
        result = contender.epoch()
        times[name].append(result)
        print(f"  {setup.model_name} round {r + 1}/{repeats} {name}: {result.wall:.3f} s wall, {result.cpu:.3f} s CPU",
              file=sys.stderr, flush=True)
    return times


def overhead_line(setup: Setup, times: dict[str, list[Epoch]], clock: str) -> str:
    """The harness's overhead in absolute terms: paired (harness - raw) per epoch and per training step."""
    if "harness" not in times or "raw" not in times:
        return ""
    pick = (lambda e: e.wall) if clock == "wall" else (lambda e: e.cpu)
    diff = statistics.median(pick(h) - pick(r) for h, r in zip(times["harness"], times["raw"], strict=True))
    steps = setup.train_batches or math.ceil((60_000 - VAL_SIZE) / setup.batch_size)
    return (f"{setup.model_name}: harness - raw, median over rounds: {diff * 1e3:+.1f} ms per epoch "
            f"= {diff / steps * 1e6:+.1f} us per training step ({steps} steps)")


def table(model_name: str, times: dict[str, list[Epoch]], clock: str) -> str:
    """Markdown rows of one model; `clock` "wall" or "cpu" picks the seconds compared."""

    def seconds(epochs: list[Epoch], key: str | None = None) -> list[float]:
        pick = 0 if clock == "wall" else 1
        return [(e.wall, e.cpu)[pick] if key is None else e.extra[key][pick] for e in epochs]

    base = seconds(times["raw"]) if "raw" in times else None

    def row(label: str, data_path: str, values: list[float], acc: float) -> str:
        median = statistics.median(values)
        if base is None:
            ratio = paired = "-"
        else:
            ratio = f"{median / statistics.median(base):.3f}"
            paired = f"{statistics.median(s / b for s, b in zip(values, base, strict=True)):.3f}"
        return (f"| {model_name} | {label} | {data_path} | {median:.3f} | {min(values):.3f}-{max(values):.3f} "
                f"| {ratio} | {paired} | {acc:.4f} |")

    unit = "s" if clock == "wall" else "CPU s"
    lines = [f"| model | contender | data path | median epoch [{unit}] | min-max [{unit}] | ratio to raw "
             "| paired ratio | val acc |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, epochs in times.items():
        lines.append(row(name, DATA_PATHS[name], seconds(epochs), epochs[-1].val_acc))
        for key in epochs[0].extra:
            lines.append(row(f"{name} ({key})", DATA_PATHS[name], seconds(epochs, key), epochs[-1].val_acc))
    return "\n".join(lines)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    for module in ("lightning", "ignite"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "cnn", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per contender (default 5)")
    parser.add_argument("--epochs-warmup", type=int, default=1, help="untimed epochs per contender first (default 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_TRAIN_BATCHES} train and {QUICK_VAL_BATCHES} val batches an epoch")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS),
                        help="default: all; Lightning / Ignite are skipped with a note when not installed")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32", help="bf16: autocast for every contender")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads, the same for all (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="default: $HARNESS_DATA_DIR, else ./data")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what the table compares: wall seconds (default) or the process's CPU seconds, "
                        "steadier on a shared machine (both are in --json)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measured time to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))  # `models/` when run from a checkout without `pip install -e .`
    warnings.filterwarnings("ignore")  # Lightning's "few workers" advice and the like, not results
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [n for n in dict.fromkeys(args.contenders) if installed(n)]
    skipped = [n for n in args.contenders if not installed(n)]
    info = machine(device)
    command = "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]) if argv is None else str(argv)
    print(f"machine: {info['cpu']}, {info['cpu_count']} cores, torch {info['torch']} "
          f"({info['torch_threads']} threads), python {info['python']}"
          + (f", GPU {info['gpu']}" if "gpu" in info else "")
          + "".join(f", {m} {info[m]}" for m in ("lightning", "ignite") if m in info))
    print(f"command: {command}")
    print(f"device {device}, precision {args.precision}, batch {args.batch_size}, "
          f"{'quick: ' + str(QUICK_TRAIN_BATCHES) + ' train batches' if args.quick else 'full epochs'}, "
          f"{args.epochs_warmup} warm-up + {args.repeats} timed epochs each, alternating; load average before "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    if skipped:
        print(f"skipped (not installed; pip install -e '.[bench]'): {', '.join(skipped)}")

    results: dict[str, Any] = {"machine": info, "command": command, "args": {k: str(v) for k, v in vars(args).items()},
                               "models": {}}
    tables, notes = [], []
    for model_name in ("mlp", "cnn") if args.model == "both" else (args.model,):
        from harness.recipe.schema import load_recipe

        setup = Setup(model_name, load_recipe(RECIPES[model_name]).model.args, device, args.precision,
                      args.batch_size, args.seed, QUICK_TRAIN_BATCHES if args.quick else None,
                      QUICK_VAL_BATCHES if args.quick else None, args.data_root)
        times = bench_model(setup, names, args.repeats, args.epochs_warmup)
        tables.append(table(model_name, times, args.clock))
        notes.append(overhead_line(setup, times, args.clock))
        results["models"][model_name] = {name: [{"wall": e.wall, "cpu": e.cpu, "val_acc": e.val_acc, **e.extra}
                                                for e in ep] for name, ep in times.items()}
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print("\n".join([tables[0], *(t.split("\n", 2)[2] for t in tables[1:])]))
    print("\n" + "\n".join(n for n in notes if n))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
