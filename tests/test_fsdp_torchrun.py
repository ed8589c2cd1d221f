"""`trainer.strategy: fsdp` end to end, on CPU with Gloo: one run handed between world sizes.

    1 process, epoch 1 -> 2 ranks (torchrun), epochs 2-3 -> 3 ranks, epoch 4, rank 1 killed (SIGKILL)
    in the middle of saving it -> 1 process, epoch 4 again from the 2-rank checkpoint

Every stage keeps the global batch (48 = 1 x 48 = 2 x 24 = 3 x 16) and has no dropout, so each epoch's
train/loss (one optimizer step: two micro-batches, accumulated without gradient sync, clipped) must
equal a plain single-process run's to 1e-4, and the validation counts must be the same. The 2- and
3-rank stages also checkpoint the blocks' activations.

And, closer up (tests/torchrun_gradients.py): the gradients DDP and FSDP produce on 2 ranks, with and
without activation checkpointing and accumulation, against one process's gradients of the whole batch,
and the norm `clip_grad_norm_` finds over sharded gradients. Three torchrun launches in all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_fake_mnist

from harness.core import sharded_checkpoint
from harness.train import main

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = str(REPO / "recipes" / "mnist_mlp.yaml")
GLOBAL_BATCH = 48
# One optimizer step an epoch: 2 batches of GLOBAL_BATCH, accumulated; the gradient norm is clipped well
# below its size, so a clip computed from one rank's slice of the gradients would change every step.
# 41 validation and 41 test images in batches of 10: at 2 ranks one rank has 3 batches, the other 2, and
# the sharded model's forwards must still pair up across ranks.
COMMON = ["model.name=residual_mlp", "model.args={width: 32, depth: 3, expansion: 2}", "data.val_size=41",
          "data.eval_batch_size=10", "trainer.limit_train_batches=2", "trainer.accumulate_grad_batches=2",
          "trainer.grad_clip_norm=0.05", "optim.lr=0.01", "scheduler.name=none", "trainer.monitor=val/loss",
          "trainer.mode=min", "trainer.progress=false", "trainer.device=cpu", "logging.tensorboard=false",
          "metrics.cm.type=confusion_matrix"]
TOLERANCE = 1e-4


def batch(world: int) -> str:
    return f"data.batch_size={GLOBAL_BATCH // world}"


def history(run: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return {h["epoch"]: h for h in lines if "epoch" in h}


def torchrun(nproc: int, *args: str, data: Path, kill: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    env.pop("HARNESS_KILL_AT", None)
    if kill is not None:
        env.update(HARNESS_KILL_AT=kill, HARNESS_KILL_RANK="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "harness.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def assert_same_epochs(run: dict[int, dict], reference: dict[int, dict], epochs: list[int]) -> None:
    for epoch in epochs:
        got, want = run[epoch], reference[epoch]
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=TOLERANCE), epoch
        assert got["val/loss"] == pytest.approx(want["val/loss"], rel=TOLERANCE), epoch
        assert got["val/acc"] == want["val/acc"], epoch  # every validation sample counted once, the same way
        assert got["val/f1"] == pytest.approx(want["val/f1"], rel=1e-9), epoch


def test_every_strategy_gives_one_process_gradients(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "torchrun_gradients.py"), str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for tag in ("", "+ac"):  # activation checkpointing changes no gradient
            assert result[f"ddp{tag}"] < 1e-6
            assert result[f"fsdp{tag}"] < 1e-6
            assert result[f"fsdp{tag}_accumulated"] < 1e-6
            assert result[f"fsdp{tag}_reduced_before_sync"] == 0  # the first micro-batch reduced nothing
            # the total norm over every rank's slices, not this rank's alone
            assert result[f"fsdp{tag}_norm"] == pytest.approx(result["oracle_norm"], rel=1e-6)
            assert result[f"fsdp{tag}_clipped"] < 1e-8
        assert result["trainer_sync_flags"] == [False, True, False, True] and result["trainer_steps"] == 2
        assert result["bf16_compute_dtype"] == "torch.bfloat16" and result["bf16_grad_dtype"] == "torch.float32"
        assert result["bf16_relative_diff"] < 0.05  # bf16 keeps 8 bits of mantissa
        assert result["stale_optimizer"].startswith("the optimizer holds parameters the sharded model does not have")


def test_fsdp_run_moves_between_world_sizes(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    write_fake_mnist(data, n_train=281, n_test=41)  # 240 training images: 5 batches of 48, no padding at 3 ranks
    common = [*COMMON, f"data.root={data}"]

    # The reference: one process, no strategy, 4 epochs straight.
    assert main([RECIPE, *common, batch(1), "trainer.epochs=4", f"logging.root={tmp_path / 'plain'}"]) == 0
    [plain] = (tmp_path / "plain").glob("*/*")
    reference = history(plain)
    losses = [reference[e]["train/loss"] for e in (1, 2, 3, 4)]
    assert len({round(v, 4) for v in losses}) == 4  # the weights move: each step's loss differs

    # Epoch 1 in one process: strategy fsdp trains the whole model and writes sharded checkpoints.
    runs = tmp_path / "runs"
    assert main([RECIPE, *common, batch(1), "trainer.strategy=fsdp", "trainer.epochs=1", f"logging.root={runs}"]) == 0
    [run] = runs.glob("*/*")
    last = run / "checkpoints" / "last"
    assert last.is_symlink() and (last / "rng-0.pt").is_file() and not (last / "rng-1.pt").exists()

    # Saved by 1 -> resumed by 2 ranks (sharded), epochs 2 and 3.
    two = torchrun(2, str(run / "config.yaml"), batch(2), "trainer.epochs=3", "trainer.activation_checkpointing=true",
                   "--resume", str(last), data=data)
    assert two.returncode == 0, two.stderr[-3000:]
    assert ("# FSDP over 2 ranks: 3 ResidualBlock sharded one by one, then the root; "
            "activation checkpointing: 3 ResidualBlock") in two.stdout
    assert_same_epochs(history(run), reference, [1, 2, 3])
    summary = json.loads((run / "summary.json").read_text())
    params = summary["memory"]["parameters"]
    assert len(params["per_rank"]) == 2 and sum(params["per_rank"]) == params["unsharded"]
    # each rank holds half the parameters (dim-0 slices of odd-sized tensors differ by a row at most)
    assert all(abs(held - params["unsharded"] / 2) <= 0.01 * params["unsharded"] for held in params["per_rank"])
    state = summary["memory"]["optimizer_state"]
    assert all(abs(held - state["unsharded"] / 2) <= 0.01 * state["unsharded"] for held in state["per_rank"])
    assert len(summary["peak_memory"]["per_rank_bytes"]) == 2
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "rng-0.pt",
                                                      "rng-1.pt", "trainer.pt"]
    # evaluate consolidates the sharded best checkpoint in one process: the run's own (sharded) test figures
    capsys.readouterr()
    from harness.workflows.evaluation import evaluate

    scored = evaluate(str(run / "config.yaml"), run / "checkpoints" / "best", write=False, verbose=False)
    assert scored["confusion_matrix"] == summary["test"]["cm"]
    assert scored["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)
    epoch3 = os.readlink(last)

    # Saved by 2 -> resumed by 3 ranks; rank 1 is killed after writing its slice of epoch 4's checkpoint.
    three = torchrun(3, str(run / "config.yaml"), batch(3), "trainer.epochs=4", "--resume", str(last), data=data,
                     kill="sharded:shards-written:1")
    assert three.returncode != 0
    assert "SIGKILL" in three.stderr or "Signal 9" in three.stderr, three.stderr[-3000:]
    assert_same_epochs(history(run), reference, [4])  # logged before the save began
    assert os.readlink(last) == epoch3  # the link still names epoch 3's folder, whole
    assert [p.name for p in (run / "checkpoints").glob(".epoch4-*.tmp")]  # the killed save's half-written folder
    assert sharded_checkpoint.read_state(last)["epoch"] == 3

    # Saved by 2 -> resumed by 1 process: epoch 4 again, as the uninterrupted run trained it.
    assert main([str(run / "config.yaml"), batch(1), "trainer.epochs=4", "--resume", str(last)]) == 0
    assert_same_epochs(history(run), reference, [1, 2, 3, 4])
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the killed save's leftovers are gone
    assert sharded_checkpoint.read_state(last)["epoch"] == 4
