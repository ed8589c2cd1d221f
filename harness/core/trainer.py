"""The Trainer: a plain training loop around a model, an optimizer and a loss.

`fit` runs epochs of `train_epoch` then `validate` (or, step-based, intervals of `val_every_n_steps`
optimizer steps then `validate`, until `max_steps`); `evaluate` runs the same validation pass on a test
split. Change a step by subclassing (`training_step`, `validation_step`, the `on_*` hooks) or hang a
feature on the loop with a `Callback`. The Trainer knows nothing of YAML or the command line.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from harness.core import sharded_checkpoint
from harness.core.callbacks import Callback, callback_key
from harness.core.checkpoint import FORMAT, atomic_save, check_model_state, read_checkpoint
from harness.core.device import (
    batch_size_of,
    check_precision,
    float32_predictions,
    mark_batch_dynamic,
    move_to_device,
    resolve_device,
    unwrap_model,
)
from harness.core.distributed import (
    all_gather_states,
    all_reduce_sum,
    any_rank,
    broadcast_buffers,
    convert_sync_batchnorm,
    current,
    gradient_sync,
    is_distributed,
    is_main_process,
    nonfinite_on_any_rank,
)
from harness.core.fsdp import is_sharded, lockstep, set_gradient_sync
from harness.core.loggers import JsonlLogger, TensorBoardLogger
from harness.core.memory import format_report, gather, per_rank_report, state_bytes
from harness.core.progress import EpochProgress
from harness.core.seed import get_rng_state, set_rank_rng_state, set_rng_state
from harness.core.speed import flop_counter, peak_flops, peak_memory_mb
from harness.errors import HarnessError
from harness.metrics import MeanMetric, Metric

Precision = Literal["32", "bf16", "16"]
Strategy = Literal["auto", "ddp", "fsdp"]
STRATEGIES = ("auto", "ddp", "fsdp")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (policy `halt`, or too many `skip`s in a row)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped `fit` after the current step; callbacks had `on_interrupt` first."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class Trainer:
    """Train and evaluate an `nn.Module`.

    Args:
        model: the network; moved to `device`.
        optimizer: any `torch.optim.Optimizer` over the model's parameters; None for a Trainer that
            only evaluates (`validate` / `evaluate`; `fit` refuses, and no DDP wrapper is built).
        loss_fn: any callable `(outputs, target) -> scalar loss`, e.g. `nn.CrossEntropyLoss()`.
        metrics: name -> metric object with `update(preds, target)`, `compute()`, `reset()`, `to(device)`
            (`harness.metrics` or torchmetrics). Computed on every validation / test pass.
        device: "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:1", ...
        log_dir: folder for TensorBoard events and `history.jsonl`; None logs nothing to disk.
        scheduler: an LR scheduler, stepped every optimizer step (`scheduler_interval="step"`) or epoch.
        precision: "32", "bf16" (autocast; CPU or CUDA) or "16" (autocast + GradScaler; CUDA only).
        accumulate_grad_batches: optimizer step every N batches, gradients averaged over them (over their
            samples; with token targets over their real tokens on all ranks: `_micro_batches`).
        grad_clip_norm / grad_clip_value: clip gradients by total norm / by value before each step.
        on_nonfinite: "halt" (stop with NonFiniteLossError, checked at each progress refresh and epoch
            end, no per-step sync) or "skip" (drop that step's update; one host sync per step).
        max_nonfinite_skips: with "skip", halt after this many non-finite steps in a row.
        callbacks: `Callback` objects, called in order after the Trainer's own `on_*` hooks.
        loggers: objects with `log(scalars, step)` / `close()`; default: TensorBoard + JSONL in `log_dir`.
        tensorboard: with the default loggers, write TensorBoard events too (False: history.jsonl only).
        progress: show a tqdm bar on a terminal (one line per epoch otherwise); False is silent.
        log_every_n_steps: progress-bar refresh interval; the only host sync in the training loop.
        limit_train_batches / limit_val_batches: use only the first N batches of each epoch / validation pass.
        limit_test_batches: the same for `evaluate` (the test pass); None, the default, scores it all.
        compile: wrap the model in `torch.compile`; the batch dimension is marked dynamic, so an epoch's
            short last batch reuses the graph instead of compiling another. A sharded model is compiled
            block by block when it is sharded (`harness.core.fsdp.shard_model`), not here.
        sync_batchnorm: under torchrun, turn BatchNorm layers into SyncBatchNorm (statistics over the
            global batch in training; CUDA only). Without it each rank normalises by its own batch, and
            validation uses rank 0's running statistics on every rank.
        throughput: log with every validation the training throughput and memory: `tokens_per_s` (when the
            training data has `tokens_per_sample`), `flops_per_s` (the first training batch's FLOPs, counted
            once with `torch.utils.flop_counter`, times the samples trained per second), `mfu` (on a GPU
            whose peak `harness.core.speed.PEAK_FLOPS` knows) and `peak_memory_mb`.
        strategy: how several processes share the work. "auto" and "ddp": under torchrun the model is
            wrapped in DistributedDataParallel (every rank holds all of it). "fsdp": under torchrun the
            model must come sharded (`harness.core.fsdp.shard_model`, then the optimizer built over its
            sharded parameters); checkpoints are sharded folders (`harness.core.sharded_checkpoint`) that
            resume at any world size, in one process too, where the model trains whole.

    Under torchrun (a process group is initialised, see `harness.core.distributed`) the model is wrapped in
    DistributedDataParallel (or comes sharded), the epoch's train loss and every metric are summed over ranks,
    and only rank 0 logs and shows progress. Give each rank its own shard of the data (TensorLoader rank/world_size).
    Gradient accumulation reduces the gradients on the last batch of each group only (DDP's `no_sync`, FSDP's
    `set_requires_gradient_sync`); single-file checkpoints hold every rank's RNG states, sharded ones each
    rank's own, and each rank resumes with its own.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        loss_fn: Any,
        metrics: Mapping[str, Any] | None = None,
        *,
        device: str | torch.device = "auto",
        log_dir: str | Path | None = None,
        scheduler: Any = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
        precision: Precision = "32",
        accumulate_grad_batches: int = 1,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
        on_nonfinite: Literal["halt", "skip"] = "halt",
        max_nonfinite_skips: int = 10,
        callbacks: Sequence[Callback] = (),
        loggers: Sequence[Any] | None = None,
        tensorboard: bool = True,
        progress: bool = True,
        log_every_n_steps: int = 50,
        limit_train_batches: int | None = None,
        limit_val_batches: int | None = None,
        limit_test_batches: int | None = None,
        compile: bool = False,
        sync_batchnorm: bool = False,
        throughput: bool = False,
        strategy: Strategy = "auto",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: allowed are {', '.join(STRATEGIES)}")
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # torchrun pinned this rank's GPU
        check_precision(precision, self.device)
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        model = model.to(self.device)
        if sync_batchnorm and is_distributed() and optimizer is not None:
            if is_sharded(model):  # converting swaps modules fully_shard already wrapped
                raise ValueError("sync_batchnorm with a sharded model: convert BatchNorm layers before sharding")
            model = convert_sync_batchnorm(model, self.device)
        self.model = model
        # Validation runs the bare module: DDP's forward broadcasts buffers, a collective that would
        # hang when ranks have different numbers of validation batches (shards are not padded).
        self.eval_model = model
        self.strategy = strategy
        self.sharded_checkpoints = strategy == "fsdp"  # in one process too: a torchrun run may resume them
        if is_sharded(model):  # FSDP: every rank runs every forward, validation included (see validate)
            if strategy != "fsdp":
                raise ValueError(f"the model is sharded (fully_shard), so strategy must be 'fsdp', not {strategy!r}")
            _check_optimizer_holds(model, optimizer)
        elif strategy == "fsdp" and is_distributed() and optimizer is not None:
            raise ValueError("strategy='fsdp' under torchrun: shard the model first (harness.core.fsdp.shard_model), "
                             "then build the optimizer over its sharded parameters")
        elif is_distributed() and optimizer is not None:  # evaluation needs no gradient all-reduce
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.compiled = compile
        if compile and not is_sharded(model):  # a sharded model compiles block by block (shard_model)
            ddp = self.model is not model
            self.model = torch.compile(self.model)
            self.eval_model = torch.compile(model) if ddp else self.model  # validation compiled too
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.metrics = {name: m.to(self.device) for name, m in (metrics or {}).items()}
        self.loss_metric = MeanMetric().to(self.device)
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.precision = precision
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if precision == "16" else None
        self.accumulate_grad_batches = accumulate_grad_batches
        self.grad_clip_norm = grad_clip_norm
        self.grad_clip_value = grad_clip_value
        self.on_nonfinite = on_nonfinite
        self.max_nonfinite_skips = max_nonfinite_skips
        self.callbacks = list(callbacks)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.loggers = list(loggers) if loggers is not None else None
        self.tensorboard = tensorboard
        self.progress = progress and is_main_process()  # one bar, on rank 0
        self.log_every_n_steps = log_every_n_steps
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.limit_test_batches = limit_test_batches
        self.throughput = throughput
        self.flops_per_sample: float | None = None  # counted on the first training batch of a `throughput` fit
        self.last_pass_samples = 0  # samples (a language model's: tokens) the last validate / evaluate pass covered
        # Bytes of parameters, gradients and optimizer state, per rank and unsharded, measured at the first
        # optimizer step (when all three exist): `harness.core.memory.per_rank_report`.
        self.memory: dict[str, Any] | None = None

        self.epoch = 0  # epochs completed (step-based training: validation intervals completed)
        self.global_step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches done in the current epoch (non-zero only mid-epoch)
        # Loss sum, its weight (samples, or counted tokens) and sample count of those batches: after a
        # mid-epoch resume the epoch's train/loss still averages the whole epoch, not just the batches after it.
        self.partial_epoch = {"loss_sum": 0.0, "weight": 0.0, "samples": 0}
        self.history: list[dict[str, float]] = []
        self.should_stop = False  # a hook or callback sets it to end `fit` after this epoch
        self.nonfinite_skipped = 0
        self.last_epoch_samples = 0  # samples seen by the last train_epoch (for samples/s)
        self.train_data: Iterable[Any] | None = None  # set by fit; its order state goes into checkpoints
        self.max_steps: int | None = None  # set by fit: None trains epochs, a number trains that many steps
        self.val_every_n_steps: int | None = None
        self._signal: int | None = None
        # Under torchrun: (global_step, batch_in_epoch, every rank's RNG states) gathered before the
        # callbacks that save checkpoints (on rank 0) run; see `_share_rng_states`.
        self._rank_rng: tuple[int, int, list[dict[str, Any]]] | None = None

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        train_data: Iterable[Any],
        val_data: Iterable[Any] | None = None,
        epochs: int = 1,
        resume_from: str | Path | None = None,
        *,
        max_steps: int | None = None,
        val_every_n_steps: int | None = None,
    ) -> list[dict[str, float]]:
        """Train until `epochs` epochs are done (counting those before a resume); returns the history.

        Each history entry holds `epoch`, `train/loss`, `val/<metric>`, `lr` (the rate the epoch started
        with), `lr_end` (the rate after its scheduler steps), `epoch_seconds`, `samples_per_s`.

        Step-based (`max_steps`, as language models train: their data has no epochs): train until
        `max_steps` optimizer steps are done, validating every `val_every_n_steps` (default: at the end
        only). Each such interval is what an epoch is otherwise, for the hooks and callbacks too (last.pt
        after each, early stopping's patience counts validations), and its entry holds `step` and
        `interval_seconds` instead of `epoch` and `epoch_seconds`; everything is logged at the step.
        """
        if self.optimizer is None:
            raise ValueError("this Trainer has no optimizer: it can validate and evaluate, not fit")
        self._set_length(train_data, max_steps, val_every_n_steps)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if self.loggers is None:
            # Opened now, before the first step: a resumed run's files are checked (a torn history
            # line is dropped) and whatever a killed run logged past the checkpoint is purged.
            self.loggers = self._default_loggers(resumed=resume_from is not None)
        self.train_data = train_data
        unit = "epoch" if self.max_steps is None else "interval"
        self._call("on_fit_start")
        with self._catch_signals():
            while not self._finished(epochs) and not self.should_stop:
                self._call("on_epoch_start", self.epoch + 1)
                started = time.perf_counter()
                # The rate this epoch starts with (after a mid-epoch resume: the one it started with).
                lr = self.partial_epoch.setdefault("lr", self.optimizer.param_groups[0]["lr"])
                logs = self.train_epoch(train_data)
                if self._signal is not None:
                    self._share_rng_states()
                    self._call("on_interrupt")
                    raise TrainingInterrupted(self._signal)
                train_seconds = time.perf_counter() - started
                samples = self.last_epoch_samples
                if val_data is not None:
                    logs.update(self.validate(val_data))
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self.scheduler.step()
                # lr: the rate the epoch trained with (at its start; a per-step schedule moves it within
                # the epoch); lr_end: the rate after the epoch's scheduler steps, the next epoch's start.
                logs["lr"], logs["lr_end"] = lr, self.optimizer.param_groups[0]["lr"]
                self.epoch += 1
                clock = {"epoch": self.epoch} if self.max_steps is None else {"step": self.global_step}
                logs = {**clock, **logs, f"{unit}_seconds": time.perf_counter() - started}
                logs["samples_per_s"] = samples / train_seconds
                if self.throughput:
                    logs.update(self._throughput(samples, train_seconds))
                self.history.append(logs)
                self.log(logs, step=self.log_step)
                if self.progress:
                    print(epoch_line(logs, epochs if self.max_steps is None else self.max_steps), flush=True)
                self._share_rng_states()
                self._call("on_epoch_end", self.epoch, logs)
        self._call("on_fit_end")
        return self.history

    def _set_length(self, train_data: Iterable[Any], max_steps: int | None, val_every_n_steps: int | None) -> None:
        """Epoch-based (`max_steps` None) or step-based training; a step-based run's settings checked."""
        self.max_steps, self.val_every_n_steps = max_steps, None
        if max_steps is None:
            if val_every_n_steps is not None:
                raise ValueError("val_every_n_steps needs max_steps (epoch-based training validates every epoch)")
            return
        every = val_every_n_steps or max_steps
        if max_steps < 1 or every < 1:
            raise ValueError(f"max_steps and val_every_n_steps must be >= 1, got {max_steps} and {every}")
        if self.limit_train_batches is not None:
            raise ValueError("limit_train_batches limits epochs; step-based training runs max_steps steps")
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            raise ValueError("a per-epoch scheduler needs epochs; step-based training steps it every optimizer step")
        needed = min(every, max_steps) * self.accumulate_grad_batches
        if _num_batches(train_data, None) is not None and _num_batches(train_data, None) < needed:
            raise ValueError(f"an interval of {min(every, max_steps)} steps takes {needed} batches, but one pass over "
                             f"the training data has {_num_batches(train_data, None)}")
        self.val_every_n_steps = every

    def _finished(self, epochs: int) -> bool:
        return self.epoch >= epochs if self.max_steps is None else self.global_step >= self.max_steps

    @property
    def log_step(self) -> int:
        """Where logs go on the x-axis: the epoch, or in step-based training the optimizer step."""
        return self.epoch if self.max_steps is None else self.global_step

    def position(self) -> str:
        """Where training is, in words: `epoch 3, batch 17` (the batches done in the epoch) or `step 517`."""
        if self.max_steps is not None:
            return f"step {self.global_step}"
        return f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}"

    def train_epoch(self, train_data: Iterable[Any]) -> dict[str, float]:
        """One pass over the training data (step-based: one interval's batches); returns
        {"train/loss": mean over samples, or over the real tokens of token targets}."""
        self.model.train()
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(self.epoch)  # the epoch's order depends on (seed, epoch) only: exact resume
        total = _num_batches(train_data, self._epoch_batches())
        start = self.batch_in_epoch  # > 0 after resuming from a checkpoint written mid-epoch
        desc = f"epoch {self.epoch + 1}" if self.max_steps is None else f"to step {self._interval_end()}"
        bar = EpochProgress(islice(train_data, start, total), None if total is None else total - start, desc,
                            self.progress)
        # One slot per batch: the loss stays on the device (no sync); NaN is located at the next check.
        step_losses = torch.zeros(total - start if total is not None else 0, device=self.device)
        step_weights = torch.zeros_like(step_losses)  # what each loss averages: samples, or counted tokens
        sizes: list[int] = []
        group_loss: Tensor | None = None  # sum of the losses of the current accumulation group
        checked, started, distributed = 0, time.perf_counter(), is_distributed()
        for i, batch, divisor, weight in self._micro_batches(bar, start, total):
            step_ends = (i + 1) % self.accumulate_grad_batches == 0 or i + 1 == total
            # Reduce the gradients once, at the group's last batch: DDP's no_sync, FSDP's gradient sync switch.
            set_gradient_sync(self.model, step_ends)  # a sharded model's; a no-op for any other
            with gradient_sync(self.model, step_ends):  # DDP's; a no-op for any other
                loss = self._forward_backward(batch, divisor)
            # "skip" must judge the whole group: one non-finite batch poisons the summed gradients
            # even when the group's last loss is finite.
            group_loss = loss.detach() if group_loss is None else group_loss + loss.detach()
            if step_ends:
                self._optimizer_step(group_loss)
                group_loss = None
            slot = i - start
            step_losses = _record(step_losses, slot, loss)
            step_weights = _record(step_weights, slot, weight)
            sizes.append(batch_size_of(batch))
            self.batch_in_epoch = i + 1
            self._call_batch_end(i, loss)
            if (slot + 1) % self.log_every_n_steps == 0:
                # note: .item() is a CPU-GPU sync point; it happens only at this refresh interval.
                bar.refresh(loss=loss.item(), samples_per_s=sum(sizes) / (time.perf_counter() - started))
                self._check_finite(step_losses, checked, slot + 1, start)
                checked = slot + 1
                if distributed and self._agree_on_signal():
                    break
            # Stop only after an optimizer step: gradients accumulated so far are not in a checkpoint.
            if self._signal is not None and not distributed and step_ends:
                break
        self._check_finite(step_losses, checked, len(sizes), start)
        train_loss = self._epoch_loss(step_losses, step_weights, sizes)
        bar.close(f"train/loss {train_loss:.4f}")
        return {"train/loss": train_loss}

    def _micro_batches(self, batches: Iterable[Any], start: int, total: int | None
                       ) -> Iterator[tuple[int, Any, Tensor | int, Tensor | int]]:
        """(index, batch on the device, what its mean loss is divided by, its weight in train/loss).

        Samples: streamed one by one; the divisor is the accumulation group's size (N batches of B give
        the gradient of one batch of N*B), the weight the batch's samples. Token targets (`_token_count`):
        the group's batches are fetched and their tokens counted first, and each mean loss is divided by
        (the group's tokens on all ranks) / (its tokens * world size): summed over the group and averaged
        over the ranks by DDP / FSDP, the gradient is the mean over every token, wherever the padding
        falls (Hugging Face's `num_items_in_batch`). The counts stay on the device: no host sync, one
        scalar all-reduced per step under torchrun. Equal counts everywhere give divisors of exactly the
        group's size, so the same bits as without counting; the weight is the batch's counted tokens."""
        n, batches, i = self.accumulate_grad_batches, iter(batches), start
        for first in batches:
            first = self.to_device(first)
            group_end = (i // n + 1) * n if total is None else min((i // n + 1) * n, total)
            tokens = self._token_count(first)
            if tokens is None:
                yield i, first, group_end - (i // n) * n, batch_size_of(first)
                i += 1
                continue
            group = [first, *(self.to_device(b) for b in islice(batches, group_end - i - 1))]
            counts = torch.stack([tokens, *(self._token_count(b) for b in group[1:])])
            # One batch in one process: its own mean is the token mean (divisor 1, no work in the step).
            divisors = _token_divisors(counts) if len(group) > 1 or is_distributed() else [1]
            for j, batch in enumerate(group):
                yield i + j, batch, divisors[j], counts[j]
            i += len(group)

    def _token_count(self, batch: Any) -> Tensor | None:
        """The counted tokens of an `(inputs, targets)` batch whose targets are token ids (integers, 2+
        dimensions) under a mean loss with an `ignore_index` and no class weights (its mean divides by
        this count); None for anything else (classification: its samples)."""
        loss = self.loss_fn
        ignore = getattr(loss, "ignore_index", None)
        if not isinstance(ignore, int) or getattr(loss, "weight", None) is not None \
                or getattr(loss, "reduction", "mean") != "mean":
            return None
        target = batch[1] if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
        if not isinstance(target, Tensor) or target.is_floating_point() or target.ndim < 2:
            return None
        return (target != ignore).sum()

    def _forward_backward(self, batch: Any, divisor: Tensor | int) -> Tensor:
        """`training_step` under autocast, then backward. The first batch of a `throughput` fit is run
        under a FLOP counter, once: what one sample costs to train (forward and backward)."""
        counter = flop_counter() if self.throughput and self.flops_per_sample is None else None
        with counter or contextlib.nullcontext():
            with self.autocast():
                loss = self.training_step(batch)
            self._backward(loss, divisor)
        if counter is not None:
            self.flops_per_sample = counter.get_total_flops() / batch_size_of(batch)
        return loss

    def _throughput(self, samples: int, seconds: float) -> dict[str, float]:
        """Tokens/s, FLOP/s, MFU and peak memory of the interval just trained (`throughput=True`).
        `samples` counts every rank's; MFU divides by the peak of all ranks' GPUs."""
        logs = {}
        tokens_per_sample = getattr(self.train_data, "tokens_per_sample", None)
        if tokens_per_sample is not None:
            logs["tokens_per_s"] = samples * tokens_per_sample / seconds
        if self.flops_per_sample is not None:
            logs["flops_per_s"] = self.flops_per_sample * samples / seconds
            peak = peak_flops(self.device, self.precision)
            if peak is not None:
                logs["mfu"] = logs["flops_per_s"] / (peak * current().world_size)
        logs["peak_memory_mb"] = peak_memory_mb(self.device)
        return logs

    def _epoch_batches(self) -> int | None:
        """Batches this epoch trains: `limit_train_batches` (None: all), or in step-based training those of
        the current interval's optimizer steps (interval k covers steps k * val_every_n_steps onwards)."""
        if self.max_steps is None:
            return self.limit_train_batches
        assert self.val_every_n_steps is not None
        return (self._interval_end() - self.epoch * self.val_every_n_steps) * self.accumulate_grad_batches

    def _interval_end(self) -> int:
        assert self.max_steps is not None and self.val_every_n_steps is not None
        return min((self.epoch + 1) * self.val_every_n_steps, self.max_steps)

    def _backward(self, loss: Tensor, divisor: Tensor | int) -> Tensor:
        """Backward of the loss divided by `divisor` (`_micro_batches`: the group's size, or its share of
        the group's tokens), AMP-scaled for fp16; returns the divided loss, detached."""
        if isinstance(divisor, Tensor):
            scaled = loss / divisor.to(loss.dtype)
        else:
            scaled = loss / divisor if divisor > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return scaled.detach()

    def _agree_on_signal(self) -> bool:
        """Under torchrun all ranks must stop after the same step (or DDP's next all-reduce waits
        forever): a signal on any rank stops them all, agreed here at the refresh interval."""
        if any_rank(self._signal is not None, self.device):
            self._signal = self._signal or signal.SIGTERM
            return True
        return False

    def _epoch_loss(self, step_losses: Tensor, step_weights: Tensor, sizes: list[int]) -> float:
        """The epoch's mean loss over what the losses average (samples, or counted tokens: validation's
        weighting), summed over ranks (a no-op in one process), including the batches done before a
        mid-epoch resume; keeps the partial sums when a signal cut the epoch short."""
        done = len(sizes)
        totals = torch.stack([(step_losses[:done] * step_weights[:done]).sum().double(),
                              step_weights[:done].double().sum(),
                              torch.tensor(float(sum(sizes)), dtype=torch.float64, device=self.device)])
        all_reduce_sum(totals)
        samples = int(totals[2])
        partial = self.partial_epoch
        loss_sum = float(totals[0]) + partial["loss_sum"]
        weight = float(totals[1]) + partial.get("weight", partial["samples"])  # older checkpoints: samples
        seen = samples + partial["samples"]
        if self._signal is None:
            self.batch_in_epoch = 0
            self.partial_epoch = {"loss_sum": 0.0, "weight": 0.0, "samples": 0}
        else:  # kept for the resume, with the epoch's starting lr
            self.partial_epoch = {**partial, "loss_sum": loss_sum, "weight": weight, "samples": seen}
        self.last_epoch_samples = samples
        return loss_sum / max(weight, 1)

    def _optimizer_step(self, loss: Tensor) -> None:
        # A host sync, only in "skip" mode; under torchrun one all-reduce too: DDP has averaged one rank's
        # NaN gradients into every rank's, so all ranks must skip (and halt) together.
        if self.on_nonfinite == "skip" and nonfinite_on_any_rank(loss):
            self.nonfinite_skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.nonfinite_skipped >= self.max_nonfinite_skips:
                raise NonFiniteLossError(
                    f"non-finite loss in {self.nonfinite_skipped} steps in a row ("
                    f"{'' if self.max_steps is not None else f'epoch {self.epoch + 1}, '}step {self.global_step + 1}); "
                    "stopping"
                )
            return
        self.nonfinite_skipped = 0
        if self.grad_clip_norm is not None or self.grad_clip_value is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            if self.grad_clip_value is not None:
                nn.utils.clip_grad_value_(params, self.grad_clip_value)
            if self.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
        self._step_and_zero_grad()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.global_step += 1

    def _step_and_zero_grad(self) -> None:
        """The optimizer step (through the GradScaler for fp16, which skips steps with inf gradients)."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.memory is None:  # the first step: parameters, gradients and optimizer state all exist now
            self._measure_memory()
        self.optimizer.zero_grad(set_to_none=True)

    def _measure_memory(self) -> None:
        """What each rank holds against the whole model (every rank calls this at its first step together)."""
        self.memory = per_rank_report(gather(state_bytes(self.model, self.optimizer)))
        if self.progress:
            print(f"# memory after the first step: {format_report(self.memory)}", flush=True)

    def train_step(self, batch: Any, *more: Any) -> Tensor:
        """One optimizer step on one batch, or on a group of batches (all already on the device), outside `fit`.

        `training_step` under autocast for each batch, backward of its loss divided as `fit` divides an
        accumulation group's (by the group's size, so N batches of B give the gradient of one batch of N·B;
        token targets: by their share of the group's tokens; loss-scaled for fp16), then the optimizer step
        (through the scaler for fp16) and `zero_grad`. No clipping, schedule or step count: for tools that
        drive the learning rate themselves (`find_lr`). Returns the group's mean loss (per sample or token),
        on the device.
        """
        batches = (batch, *more)
        counts = [self._token_count(one) for one in batches]
        divisors = _token_divisors(torch.stack(counts)) if None not in counts else [len(batches)] * len(batches)
        total: Tensor | None = None
        for one, divisor in zip(batches, divisors, strict=True):
            with self.autocast():
                loss = self.training_step(one)
            share = self._backward(loss, divisor)
            total = share if total is None else total + share
        self._step_and_zero_grad()
        return total

    def _check_finite(self, step_losses: Tensor, begin: int, end: int, first_batch: int) -> None:
        if self.on_nonfinite != "halt" or end <= begin:
            return
        window = step_losses[begin:end]
        bad = (~torch.isfinite(window)).nonzero()
        if any_rank(bad.numel() > 0, self.device):  # every rank halts together under torchrun
            batch = first_batch + begin + (int(bad[0]) if bad.numel() else end - begin - 1) + 1
            where = f"epoch {self.epoch + 1}, batch {batch} of the epoch" if self.max_steps is None else \
                f"batch {batch} of the interval to step {self._interval_end()}"
            raise NonFiniteLossError(
                f"non-finite training loss at {where}; "
                "stopped without saving (the last checkpoint is the last good state)"
            )

    @torch.no_grad()
    def validate(self, data: Iterable[Any], prefix: str = "val") -> dict[str, Any]:
        """A `torch.no_grad()` pass in eval mode; returns {"<prefix>/loss": ..., "<prefix>/<metric>": ...}.

        Scalars come back as floats, per-class results and confusion matrices as (nested) lists.
        A test pass (prefix "test", what `evaluate` runs) uses the first `limit_test_batches` batches,
        any other the first `limit_val_batches` (None: all of them).
        The loss is averaged over what the loss function averages over (`_loss_weight`): samples, or a
        language model's tokens without the padding. `last_pass_samples` then holds how many samples
        (tokens) the figures cover (summed over ranks); a pass
        over no sample at all raises ValueError instead of reporting figures of nothing.
        """
        limit = self.limit_test_batches if prefix == "test" else self.limit_val_batches
        was_training = self.model.training
        training_model, self.model = self.model, self.eval_model  # no DDP collectives here: see __init__
        self.model.eval()
        self._call("on_validation_start")
        if self.optimizer is not None:  # under DDP: every rank validates rank 0's BatchNorm statistics
            broadcast_buffers(self.model)
        self.loss_metric.reset()
        for metric in self.metrics.values():
            metric.reset()
        batches = islice(data, _num_batches(data, limit))
        # A sharded forward is a collective: every rank runs as many as the rank with the most batches.
        steps = lockstep(batches, self.device) if is_sharded(self.model) else ((b, True) for b in batches)
        try:
            for batch, counted in steps:
                batch = self.to_device(batch)
                with self.autocast():
                    loss, preds, target = self.validation_step(batch)
                if not counted:  # a repeat that only keeps this rank in step with the others
                    continue
                self.loss_metric.update(loss.detach(), weight=self._loss_weight(target))
                preds = float32_predictions(preds)  # bf16/fp16 logits would tie and round in the metrics
                for metric in self.metrics.values():
                    metric.update(preds, target)
        finally:
            self.model = training_model
        loss = self._compute(self.loss_metric)  # syncs the loss metric's sums across ranks
        # note: a host sync, once per pass (the figures are read to the host just below anyway)
        self.last_pass_samples = int(self.loss_metric.weight_sum.item())
        results = {"loss": loss}
        results.update({name: self._compute(metric) for name, metric in self.metrics.items()})
        out = {f"{prefix}/{name}": _to_python(value) for name, value in results.items()}
        _warn_if_not_finite(f"{prefix}/loss", out[f"{prefix}/loss"])
        self._call("on_validation_end", out)
        self.model.train(was_training)
        if self.last_pass_samples == 0:  # figures of nothing (accuracy 0.0) must not pick a best.pt
            raise ValueError(f"the {prefix} pass saw no samples: its data is empty")
        return out

    def _loss_weight(self, target: Tensor) -> Tensor | int:
        """How many things a batch's mean loss averages: with class-id targets and a loss that has an
        `ignore_index` (cross-entropy), the targets that are not it (a language model's tokens, padding
        left out; for plain classification, the samples); otherwise the samples. Stays on the device."""
        ignore = getattr(self.loss_fn, "ignore_index", None)
        if ignore is None or target.is_floating_point():
            return target.shape[0]
        return (target != ignore).sum()

    def evaluate(self, data: Iterable[Any], prefix: str = "test") -> dict[str, Any]:
        """Validate on held-out data (a test split); logs the scalars under `prefix/` and returns them
        without the prefix: {"loss": ..., "acc": ...}."""
        results = self.validate(data, prefix=prefix)
        self.log(results, step=self.log_step)
        return {name.removeprefix(f"{prefix}/"): value for name, value in results.items()}

    # ------------------------------------------------------------------ steps: override to change them
    def training_step(self, batch: Any) -> Tensor:
        """Runs in train mode under autocast for every training batch (already on the device).
        Returns the mean loss of the batch as a scalar tensor; the Trainer does backward and the step."""
        inputs, target = batch
        return self.loss_fn(self.model(inputs), target)

    def validation_step(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Runs in eval mode under `torch.no_grad()` for every validation / test batch.
        Returns (mean loss, predictions for the metrics, targets)."""
        inputs, target = batch
        outputs = self.model(inputs)
        return self.loss_fn(outputs, target), outputs, target

    # ------------------------------------------------------------------ hooks: override in a subclass
    def on_fit_start(self) -> None:
        """Once before the first epoch, after a resume has been loaded."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before training epoch `epoch` (1-based)."""

    def on_train_batch_end(self, batch_idx: int, loss: Tensor) -> None:
        """After every training batch; `loss` is on the device (reading it is a host sync)."""

    def on_validation_start(self) -> None:
        """Before every validation or test pass."""

    def on_validation_end(self, metrics: dict[str, Any]) -> None:
        """After every validation or test pass, with its results."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """After epoch `epoch`'s validation, with its logs; set `self.should_stop = True` to end `fit`."""

    def on_interrupt(self) -> None:
        """SIGINT / SIGTERM arrived; the current step has finished and `fit` is about to stop."""

    def on_fit_end(self) -> None:
        """Once after the last epoch."""

    # ------------------------------------------------------------------ logging
    def log(self, scalars: Mapping[str, Any], step: int) -> None:
        """Send the scalar entries (floats and ints) to every logger; lists are skipped."""
        if self.loggers is None:
            self.loggers = self._default_loggers()
        plain = {k: v for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in self.loggers:
            logger.log(plain, step)

    def close(self) -> None:
        """Close the loggers (flushes TensorBoard)."""
        for logger in self.loggers or ():
            logger.close()
        self.loggers = None

    def _default_loggers(self, resumed: bool = False) -> list[Any]:
        if self.log_dir is None or not is_main_process():  # under torchrun only rank 0 writes
            return []
        # purge_step: after a resume, drop what a killed run logged past the checkpoint: the epochs
        # (steps) after the checkpoint's and any test line.
        purge = self.log_step + 1 if resumed else None
        jsonl = JsonlLogger(self.log_dir / "history.jsonl", purge)
        return [TensorBoardLogger(self.log_dir, purge_step=purge), jsonl] if self.tensorboard else [jsonl]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; see `save_checkpoint` for what is added on save."""
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self._progress_state(),
        }

    def _progress_state(self) -> dict[str, Any]:
        """`state_dict()` without the model and the optimizer: what a sharded checkpoint's trainer.pt holds."""
        return {
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_in_epoch": self.batch_in_epoch,
            "partial_epoch": dict(self.partial_epoch),
            "history": list(self.history),
            "callbacks": {callback_key(cb, i): cb.state_dict() for i, cb in enumerate(self.callbacks)},
            "data": self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None,
            "world_size": current().world_size,  # data.batch_size is per process: the global batch is both
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore what `state_dict` returned (the one place a Trainer's state is restored); the data
        order and the RNGs are restored by `load_checkpoint`. `source` names the file in errors."""
        self.load_weights(state, source)
        if self.optimizer is not None:
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as e:
                raise HarnessError(f"{source}: optimizer state does not fit this optimizer ({e})") from None
        self._load_progress(state, source)

    def _load_progress(self, state: dict[str, Any], source: str) -> None:
        """Schedule, scaler, counters and history from a saved state (the model and optimizer aside)."""
        for name in ("scheduler", "scaler"):
            obj, saved = getattr(self, name), state.get(name)
            if obj is not None and saved is None:
                raise HarnessError(f"{source}: the run uses a {name} but the checkpoint has none")
            if obj is not None:
                obj.load_state_dict(saved)
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.batch_in_epoch = state.get("batch_in_epoch", 0)
        self.partial_epoch = dict(state.get("partial_epoch") or {"loss_sum": 0.0, "weight": 0.0, "samples": 0})
        self.history = list(state["history"])

    def load_weights(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """The model's weights and the callbacks' states (an EMA average) of a saved state, nothing else:
        epoch, history and optimizer stay as they are (testing the best checkpoint after `fit`)."""
        model = unwrap_model(self.model)
        check_model_state(model, state["model"], source)
        model.load_state_dict(state["model"])
        self._load_callbacks(state)

    def _load_callbacks(self, state: dict[str, Any]) -> None:
        saved_callbacks = state.get("callbacks", {})
        for i, callback in enumerate(self.callbacks):
            key = callback_key(callback, i)
            if key in saved_callbacks:
                callback.load_state_dict(saved_callbacks[key])

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write `state_dict()`, the RNG states and `extra` to `path` atomically (see `harness.core.checkpoint`).

        With strategy "fsdp" `path` is a sharded checkpoint's link (`harness.core.sharded_checkpoint`):
        every rank writes its slice of the model and optimizer and its own RNG states; call it on every rank."""
        if self.sharded_checkpoints:
            state = {**self._progress_state(), "extra": extra or {}}
            sharded_checkpoint.save(path, unwrap_model(self.model), self.optimizer, state, get_rng_state())
            return Path(path)
        state = self.state_dict()
        state.update(format=FORMAT, rng=get_rng_state(), extra=extra or {})
        if self._rank_rng is not None and self._rank_rng[:2] == (self.global_step, self.batch_in_epoch):
            state["rng_per_rank"] = self._rank_rng[2]  # gathered at this very step (else left out: stale)
        atomic_save(state, path)
        return Path(path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore this Trainer and the global RNGs from `path` for an exact resume; returns the raw state
        (of a sharded checkpoint: its trainer.pt, without the tensors). Under torchrun each rank restores its
        own RNG states (`harness.core.seed.set_rank_rng_state`). A sharded checkpoint is resharded to this
        run's ranks; each rank takes the RNG states its rank saved (a rank the saving run did not have keeps
        the streams its seeding gave it)."""
        rank = current()
        if not sharded_checkpoint.is_sharded_checkpoint(path):
            state = read_checkpoint(path)
            self.load_state_dict(state, source=str(path))
            set_rank_rng_state(state, rank.rank, rank.world_size)
            return state
        state = sharded_checkpoint.read_state(path)
        self._load_sharded(path, state, optimizer=True)
        self._load_progress(state, str(path))
        rng = sharded_checkpoint.read_rng(path, rank.rank)
        if rng is not None:
            set_rng_state(rng)
        return state

    def load_weights_from(self, path: str | Path) -> dict[str, Any]:
        """`load_weights` from a checkpoint file or a sharded checkpoint (every rank calls this for a sharded
        one: each reads its slice); returns the saved state (of a sharded checkpoint: its trainer.pt)."""
        if not sharded_checkpoint.is_sharded_checkpoint(path):
            state = read_checkpoint(path)
            self.load_weights(state, str(path))
            return state
        state = sharded_checkpoint.read_state(path)
        self._load_sharded(path, state, optimizer=False)
        return state

    def _load_sharded(self, path: str | Path, state: dict[str, Any], optimizer: bool) -> None:
        model = unwrap_model(self.model)
        sharded_checkpoint.check_model(model, path)
        sharded_checkpoint.load(path, model, self.optimizer if optimizer else None)
        self._load_callbacks(state)

    # ------------------------------------------------------------------ internals
    def to_device(self, batch: Any) -> Any:
        """A batch on the Trainer's device, as the loops feed it to the steps (with `compile`, its batch
        dimension marked dynamic)."""
        batch = move_to_device(batch, self.device)
        if self.compiled:  # one graph for every batch size: the short last batch does not recompile
            mark_batch_dynamic(batch)
        return batch

    def _share_rng_states(self) -> None:
        """Under torchrun, before the callbacks that may write a checkpoint (rank 0's ModelCheckpoint):
        gather every rank's RNG states (one collective, every rank reaches it), for the checkpoint to hold."""
        if is_distributed():
            self._rank_rng = (self.global_step, self.batch_in_epoch, all_gather_states(get_rng_state()))

    def _call(self, event: str, *args: Any) -> None:
        getattr(self, event)(*args)
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _call_batch_end(self, batch_idx: int, loss: Tensor) -> None:
        self.on_train_batch_end(batch_idx, loss)
        for callback in self.callbacks:
            callback.on_train_batch_end(self, batch_idx, loss)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of `precision` ("32": none); `training_step` and `validation_step` run in it."""
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _compute(self, metric: Any) -> Any:
        if isinstance(metric, Metric):
            metric.sync()  # merges the states across ranks under torch.distributed; no-op otherwise
        return metric.compute()

    @contextlib.contextmanager
    def _catch_signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM: finish the current step, then stop cleanly; a second signal stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt  # second signal: no more waiting
            self._signal = signum

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _record(buffer: Tensor, slot: int, value: Tensor | int) -> Tensor:
    """Store a step's loss (or weight) on the device (no sync), growing the buffer for data of unknown length."""
    if slot >= buffer.numel():
        buffer = torch.cat([buffer, torch.zeros(max(64, slot), device=buffer.device)])
    buffer[slot] = value.detach() if isinstance(value, Tensor) else value
    return buffer


def _token_divisors(counts: Tensor) -> Tensor:
    """What each micro-batch's mean token loss is divided by: (the group's tokens summed over ranks) /
    (its tokens * world size). One all-reduce of one scalar under torchrun, none otherwise; on the device."""
    return all_reduce_sum(counts.sum()).double() / (counts.double() * current().world_size)


def epoch_line(logs: Mapping[str, Any], total: int) -> str:
    """`epoch 2/5  train/loss 0.1234  val/loss 0.0987  val/acc 0.9712  lr 0.001  12.3s  4512 samples/s`,
    or `step 250/2000  ...` in step-based training (`total` is then max_steps)."""
    unit = "epoch" if "epoch" in logs else "step"
    seconds = logs.get("epoch_seconds", logs.get("interval_seconds"))
    shown = "  ".join(f"{k} {v:.4g}" for k, v in logs.items()
                      if isinstance(v, float) and k not in ("epoch_seconds", "interval_seconds", "samples_per_s"))
    return f"{unit} {logs[unit]}/{total}  {shown}  {seconds:.1f}s  {logs['samples_per_s']:.0f} samples/s"


def _warn_if_not_finite(name: str, value: float) -> None:
    """One stderr line per pass (rank 0) when a validation or test loss is NaN or infinite: the run goes
    on, and the JSON files record the value as null."""
    if not math.isfinite(value) and is_main_process():
        print(f"warning: {name} is {value}: a NaN or infinity in the inputs or the model's outputs "
              "(the JSON files record it as null)", file=sys.stderr, flush=True)


def _num_batches(data: Iterable[Any], limit: int | None) -> int | None:
    try:
        total = len(data)  # type: ignore[arg-type]
    except TypeError:
        return limit
    return total if limit is None else min(total, limit)


def _to_python(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _check_optimizer_holds(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """fully_shard replaces every parameter with a sharded one: an optimizer built before it would update
    tensors the model no longer uses, and the run would not learn."""
    if optimizer is None:
        return
    own = {id(p) for p in model.parameters()}
    if any(id(p) not in own for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("the optimizer holds parameters the sharded model does not have: build it after "
                         "sharding, over model.parameters()")
