"""Step-based training (`Trainer.fit(max_steps=..., val_every_n_steps=...)`): validation, checkpoints, early
stopping, the schedule and the logs all keyed to the optimizer step; an interrupted and resumed run is
bit-identical to an uninterrupted one on the CPU; settings that only make sense with epochs are refused."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import REPO
from torch.optim import lr_scheduler

from harness import Callback, Trainer, TrainingInterrupted
from harness.core.callbacks import EarlyStopping, ModelCheckpoint
from harness.core.checkpoint import read_checkpoint
from harness.data import RandomWindows, SequentialWindows
from harness.metrics import Perplexity, TokenCrossEntropyLoss
from models.gpt import GPT

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TIMING = {"interval_seconds", "samples_per_s"}
TEXT = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(0))  # 20 "characters"


def windows() -> tuple[RandomWindows, SequentialWindows]:
    train, val = TEXT[:2700], TEXT[2700:]
    return RandomWindows(train, 16, 4, seed=3), SequentialWindows(val, 16, 8)


def gpt_trainer(folder: Path, max_steps: int, callbacks: tuple[Callback, ...] = (), accumulate: int = 1) -> Trainer:
    """A 2-layer GPT with dropout (so the RNG state matters), AdamW, warmup + cosine per step, checkpoints."""
    torch.manual_seed(0)
    model = GPT(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=3)
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_steps - 3, eta_min=3e-4)
    scheduler = lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[3])
    return Trainer(model, optimizer, TokenCrossEntropyLoss(), {"ppl": Perplexity()}, device="cpu", log_dir=folder,
                   scheduler=scheduler, scheduler_interval="step", grad_clip_norm=1.0, progress=False,
                   callbacks=[ModelCheckpoint(folder / "checkpoints", "val/loss", "min"), *callbacks],
                   log_every_n_steps=2, limit_val_batches=2, accumulate_grad_batches=accumulate, tensorboard=False)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in TIMING} for entry in history]


def logged(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def test_validation_logs_and_checkpoints_are_keyed_to_the_step(tmp_path: Path) -> None:
    trainer = gpt_trainer(tmp_path, max_steps=10)
    history = trainer.fit(*windows(), max_steps=10, val_every_n_steps=4)
    assert [h["step"] for h in history] == [4, 8, 10]  # the last interval is shorter
    assert trainer.global_step == 10 and trainer.epoch == 3  # three intervals
    assert all("epoch" not in h and {"train/loss", "val/loss", "val/ppl", "lr", "lr_end"} <= set(h) for h in history)
    assert all(h["interval_seconds"] > 0 and h["samples_per_s"] > 0 for h in history)
    assert [entry["step"] for entry in logged(tmp_path)] == [4, 8, 10]
    # The schedule stepped once per optimizer step: warmup 3, then cosine down to its floor at step 10.
    assert history[-1]["lr_end"] == pytest.approx(3e-4)
    assert history[0]["lr"] == pytest.approx(3e-4)  # 0.1 x 3e-3 at step 0
    saved = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (saved["global_step"], saved["epoch"], saved["batch_in_epoch"]) == (10, 3, 0)
    # Validation during training covers limit_val_batches=2 batches: 16 windows of 16 characters, less the
    # padding of the validation text's last (shorter) window when it is among them.
    first_two = [y for _, y in windows()[1]][:2]
    assert trainer.last_pass_samples == sum(int((y != -100).sum()) for y in first_two) > 16 * 15
    scores = trainer.evaluate(windows()[1])  # the whole validation split: all 299 predicted characters
    assert trainer.last_pass_samples == 299 and scores["ppl"] == pytest.approx(2.718281828 ** scores["loss"])
    assert logged(tmp_path)[-1]["step"] == 10 and "test/loss" in logged(tmp_path)[-1]


class SignalAtStep(Callback):
    """Sends SIGTERM to this process after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_mid_interval_is_bit_identical(tmp_path: Path, accumulate: int) -> None:
    straight = gpt_trainer(tmp_path / "straight", 12, accumulate=accumulate)
    straight.fit(*windows(), max_steps=12, val_every_n_steps=5)

    interrupted = gpt_trainer(tmp_path / "split", 12, (SignalAtStep(7),), accumulate=accumulate)
    with pytest.raises(TrainingInterrupted):
        interrupted.fit(*windows(), max_steps=12, val_every_n_steps=5)
    saved = read_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert (saved["global_step"], saved["epoch"], saved["batch_in_epoch"]) == (7, 1, 2 * accumulate)

    torch.manual_seed(12345)  # a fresh process would have other RNG states: the checkpoint restores them
    resumed = gpt_trainer(tmp_path / "split", 12, (Callback(),), accumulate=accumulate)
    last = tmp_path / "split" / "checkpoints" / "last.pt"
    resumed.fit(*windows(), max_steps=12, val_every_n_steps=5, resume_from=last)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert straight.optimizer.state_dict()["param_groups"] == resumed.optimizer.state_dict()["param_groups"]
    for got, expected in zip(without_timing(resumed.history), without_timing(straight.history), strict=True):
        assert got == pytest.approx(expected, rel=1e-6)  # the cut interval's loss is summed in another order
    assert [e["step"] for e in logged(tmp_path / "split")] == [5, 10, 12]  # nothing logged twice


def test_early_stopping_counts_validations(tmp_path: Path, capsys) -> None:
    # min_delta so large that nothing counts as better: stops at the second validation after the first.
    stop = EarlyStopping("val/loss", "min", patience=2, min_delta=100.0)
    trainer = gpt_trainer(tmp_path, 40, (stop,))
    history = trainer.fit(*windows(), max_steps=40, val_every_n_steps=3)
    assert [h["step"] for h in history] == [3, 6, 9]
    assert "early stopping at step 9: val/loss has not improved for 2 validation(s)" in capsys.readouterr().err


def test_settings_that_need_epochs_are_refused(tmp_path: Path) -> None:
    trainer = gpt_trainer(tmp_path, 10)
    with pytest.raises(ValueError, match="val_every_n_steps needs max_steps"):
        trainer.fit(*windows(), val_every_n_steps=5)
    trainer.scheduler_interval = "epoch"
    with pytest.raises(ValueError, match="a per-epoch scheduler needs epochs"):
        trainer.fit(*windows(), max_steps=10)
    trainer.scheduler_interval, trainer.limit_train_batches = "step", 3
    with pytest.raises(ValueError, match="limit_train_batches limits epochs"):
        trainer.fit(*windows(), max_steps=10)
    trainer.limit_train_batches = None
    short = list(zip(TEXT[:64].view(4, 16), TEXT[1:65].view(4, 16), strict=True))  # 4 batches a pass
    with pytest.raises(ValueError, match="an interval of 5 steps takes 5 batches, but one pass over the training"):
        trainer.fit(short, max_steps=10, val_every_n_steps=5)


def test_throughput_logs_tokens_flops_and_memory(tmp_path: Path) -> None:
    from harness.core.speed import flop_counter

    trainer = gpt_trainer(tmp_path, 4)
    trainer.throughput = True
    train, val = windows()
    history = trainer.fit(train, val, max_steps=4, val_every_n_steps=2)
    # FLOPs of one training batch (4 windows of 16), counted here with a fresh model of the same shape
    torch.manual_seed(0)
    model = GPT(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)  # as trained
    x, y = next(iter(train))
    with flop_counter() as counter:
        TokenCrossEntropyLoss()(model(x), y).backward()
    assert trainer.flops_per_sample == counter.get_total_flops() / 4
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # The attention is counted too: as the math path's bmm here (dropout on), as the fused CPU kernel without
    assert counts["aten.bmm"] > 0
    model.drop.p = 0.0
    for block in model.blocks:
        block.attn.dropout = 0.0
    with flop_counter() as fused:
        TokenCrossEntropyLoss()(model(x), y).backward()
    assert {str(op) for op in fused.get_flop_counts()["Global"]} == {
        "aten.mm", "aten._scaled_dot_product_flash_attention_for_cpu",
        "aten._scaled_dot_product_flash_attention_for_cpu_backward"}
    n = sum(p.numel() for p in model.parameters())
    assert 6 * n * 4 * 16 < counter.get_total_flops() < 6 * n * 4 * 16 * 1.5  # ~6 FLOPs per parameter and token
    for entry in history:
        assert entry["tokens_per_s"] == pytest.approx(entry["samples_per_s"] * 16)
        assert entry["flops_per_s"] == pytest.approx(entry["samples_per_s"] * trainer.flops_per_sample)
        assert entry["peak_memory_mb"] > 10 and "mfu" not in entry  # no peak FLOP/s known for a CPU


def test_the_recipe_schedule_is_nanogpts_get_lr_step_for_step() -> None:
    """recipes/shakespeare_char.yaml's warmup_steps + cosine, built by the recipe layer, against nanoGPT's
    train.py `get_lr(it)` written out here, for every optimizer step of the run (and its weight decay groups)."""
    import math

    from harness.recipe.build import build_trainer
    from harness.recipe.data import Data
    from harness.recipe.schema import load_recipe
    recipe = load_recipe(REPO / "recipes" / "shakespeare_char.yaml")
    lr, min_lr, warmup, decay_steps = 1e-3, 1e-4, 100, 2000

    def get_lr(it: int) -> float:  # nanoGPT's train.py
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_steps:
            return min_lr
        ratio = (it - warmup) / (decay_steps - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    model = GPT(vocab_size=65, block_size=64, n_layer=1, n_head=1, n_embd=8)  # the schedule does not depend on it
    train, val = windows()
    trainer = build_trainer(recipe, model, Data(train, val, val, [], 65), None, torch.device("cpu"))
    for it in range(decay_steps):
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(get_lr(it), rel=1e-9, abs=1e-15), it
        trainer.optimizer.step()
        trainer.scheduler.step()
    # nanoGPT's configure_optimizers: weight decay on the 2-D parameters (matmuls, embeddings) only
    decayed, plain = trainer.optimizer.param_groups
    assert all(p.ndim == 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in plain["params"]) and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
