"""Resume and reliability: an interrupted run continues bit-identically, checkpoints survive kill -9,
SIGTERM / SIGINT stop cleanly with a resumable last.pt, and bad resume input is one line, exit 2."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, real_data_dir, requires_mnist, write_fake_mnist
from hang_guard import HANG_GUARD_S
from torch import nn
from torch.optim import lr_scheduler

from harness import Trainer, TrainingInterrupted
from harness.core.callbacks import EMA, Callback, EarlyStopping, ModelCheckpoint
from harness.core.checkpoint import atomic_save, read_checkpoint
from harness.data import TensorLoader
from harness.metrics import Accuracy
from harness.train import main

TIMING = {"epoch_seconds", "samples_per_s"}
MLP_RECIPE, CNN_RECIPE = str(REPO / "recipes" / "mnist_mlp.yaml"), str(REPO / "recipes" / "mnist.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ------------------------------------------------------------------ tiny data, model and trainer
def quadrant_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 8x8 uint8 images labelled by their brightest quadrant: learnable by a small MLP."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    quadrants = images.float().unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).flatten(1)
    return images, quadrants.argmax(1)


def loaders(batch_size: int = 16) -> tuple[TensorLoader, TensorLoader]:
    train = TensorLoader(*quadrant_data(160, 0), batch_size, mean=[0.5], std=[0.25], shuffle=True, seed=3)
    val = TensorLoader(*quadrant_data(64, 1), 32, mean=[0.5], std=[0.25], shuffle=False)
    return train, val


def dropout_trainer(checkpoints: Path, interval: str, epochs: int, extra: tuple[Callback, ...] = (),
                    accumulate: int = 1) -> Trainer:
    """MLP with dropout (so the RNG state matters), AdamW, an LR schedule, EMA, early stopping, checkpoints."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if interval == "step":
        scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * 10)  # 10 batches per epoch
    else:
        scheduler = lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    callbacks = [EMA(0.9), EarlyStopping("val/loss", mode="min", patience=10), ModelCheckpoint(checkpoints), *extra]
    return Trainer(model, optimizer, nn.CrossEntropyLoss(), {"acc": Accuracy(4)}, device="cpu", progress=False,
                   scheduler=scheduler, scheduler_interval=interval, callbacks=callbacks, log_every_n_steps=3,
                   accumulate_grad_batches=accumulate)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in TIMING} for entry in history]


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert a.optimizer.state_dict()["param_groups"] == b.optimizer.state_dict()["param_groups"]
    ema_a, ema_b = a.callbacks[0].shadow, b.callbacks[0].shadow
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert (a.epoch, a.global_step) == (b.epoch, b.global_step)


class SignalAt(Callback):
    """Sends a real signal to this process after training batch `batch_idx` of epoch `epoch`."""

    def __init__(self, epoch: int, batch_idx: int, signum: int = signal.SIGTERM) -> None:
        self.epoch, self.batch_idx, self.signum = epoch, batch_idx, signum

    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
        if trainer.epoch + 1 == self.epoch and batch_idx == self.batch_idx:
            os.kill(os.getpid(), self.signum)


# ------------------------------------------------------------------ exact resume, Python API
@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_resume_at_epoch_end_is_bit_identical(tmp_path: Path, interval: str) -> None:
    straight = dropout_trainer(tmp_path / "straight", interval, epochs=2)
    straight.fit(*loaders(), epochs=2)

    first = dropout_trainer(tmp_path / "split", interval, epochs=2)
    first.fit(*loaders(), epochs=1)
    torch.manual_seed(12345)  # a fresh process would have other RNG states: the checkpoint must restore them
    resumed = dropout_trainer(tmp_path / "split", interval, epochs=2)
    resumed.fit(*loaders(), epochs=2, resume_from=tmp_path / "split" / "last.pt")

    assert_same_state(straight, resumed)
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


# accumulate 2, signal after batch index 2: mid-group, so it stops after the group's step (batch 4).
@pytest.mark.parametrize(("accumulate", "steps_per_epoch"), [(1, 10), (2, 5)])
def test_resume_mid_epoch_after_sigterm_is_bit_identical(tmp_path: Path, accumulate: int,
                                                         steps_per_epoch: int) -> None:
    straight = dropout_trainer(tmp_path / "straight", "step", epochs=3, accumulate=accumulate)
    straight.fit(*loaders(), epochs=3)

    interrupted = dropout_trainer(tmp_path / "split", "step", epochs=3, extra=(SignalAt(epoch=2, batch_idx=2),),
                                  accumulate=accumulate)
    with pytest.raises(TrainingInterrupted):
        interrupted.fit(*loaders(), epochs=3)
    saved = read_checkpoint(tmp_path / "split" / "last.pt")
    batches = 3 if accumulate == 1 else 4
    assert (saved["epoch"], saved["batch_in_epoch"]) == (1, batches)
    assert saved["global_step"] == steps_per_epoch + batches // accumulate

    torch.manual_seed(12345)
    resumed = dropout_trainer(tmp_path / "split", "step", epochs=3, extra=(Callback(),), accumulate=accumulate)
    resumed.fit(*loaders(), epochs=3, resume_from=tmp_path / "split" / "last.pt")
    assert_same_state(straight, resumed)
    # The interrupted epoch's train/loss averages all its batches, before and after the interruption
    # (summed in another order, hence approx).
    for got, expected in zip(without_timing(resumed.history), without_timing(straight.history), strict=True):
        assert got == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ kill -9 while saving
def _save_forever(path: str, first_step: int, saved_once: Any) -> None:
    """Child process: write checkpoints to the same path as fast as possible until killed."""
    model = nn.Linear(512, 1024)  # 2 MB of weights: a save takes long enough to be hit mid-write
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), device="cpu",
                      progress=False)
    trainer.global_step = first_step
    while True:
        trainer.save_checkpoint(path)
        saved_once.set()
        trainer.global_step += 1


def test_kill_9_during_checkpoint_saves_never_leaves_a_broken_last_pt(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    # "spawn", not "fork": this process runs threads (torch's pools, pytest's), and a forked child
    # inherits locks they may hold at the fork, so it can deadlock.
    spawn = multiprocessing.get_context("spawn")
    for kill in range(8):
        saved_once = spawn.Event()
        child = spawn.Process(target=_save_forever, args=(str(path), 1000 * kill, saved_once), daemon=True)
        child.start()
        assert saved_once.wait(timeout=HANG_GUARD_S)
        time.sleep(rng.uniform(0.0, 0.05))  # a few saves in: the kill lands anywhere in one
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        state = read_checkpoint(path)  # never truncated: the old file or the new one
        assert state["model"]["weight"].shape == (1024, 512)
        assert 1000 * kill <= state["global_step"] < 1000 * (kill + 1)
    # A writer killed mid-save leaves its own temporary file behind (at most one per kill); last.pt
    # is never one of them and read_checkpoint never sees them.
    strays = list(tmp_path.glob(".last.pt.*.tmp"))
    assert len(strays) <= 8
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", *(p.name for p in strays)}


# ------------------------------------------------------------------ the CLI
def cli_env() -> dict[str, str]:
    # One thread per process: the test machine is shared and 2 threads per process thrash.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return env | ({"HARNESS_DATA_DIR": str(real_data_dir())} if real_data_dir() else {})


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.train", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p.parent.parent for p in root.glob("*/*/checkpoints/last.pt")]
    return run_dir


def epochs_logged(run_dir: Path) -> list[int]:
    lines = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [entry["epoch"] for entry in lines if "epoch" in entry]


@requires_mnist
def test_cli_resume_on_real_mnist_matches_a_straight_run(tmp_path: Path, monkeypatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The straight and the first run go through the CLI's main() in this process (one thread, like
    the child); the resume runs in a fresh process, so nothing but the checkpoint carries state over."""
    # A per-epoch schedule: it does not depend on trainer.epochs, so a 1-epoch run extended to 2 is
    # the same run as 2 epochs straight (cosine or onecycle would be stretched over 1 epoch first).
    common = [MLP_RECIPE, "trainer.limit_train_batches=30", "data.val_size=1000",
              "trainer.progress=false", "trainer.device=cpu", "scheduler.name=step", "scheduler.step_size=1",
              "scheduler.gamma=0.5"]
    monkeypatch.setenv("HARNESS_DATA_DIR", str(real_data_dir()))
    assert main([*common, "trainer.epochs=2", f"logging.root={tmp_path / 'straight'}"]) == 0
    assert main([*common, "trainer.epochs=1", f"logging.root={tmp_path / 'split'}"]) == 0
    capsys.readouterr()
    split_dir = only_run_dir(tmp_path / "split")
    resumed = run_cli(*common, "trainer.epochs=2", f"logging.root={tmp_path / 'split'}",
                      "--resume", str(split_dir / "checkpoints" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr

    a = read_checkpoint(only_run_dir(tmp_path / "straight") / "checkpoints" / "last.pt")
    b = read_checkpoint(split_dir / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert without_timing(a["history"]) == without_timing(b["history"])
    assert epochs_logged(split_dir) == [1, 2]  # appended after the resume, no duplicate epochs
    summary = json.loads((split_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2


SLOW_MODEL = '''
import os
import time
from pathlib import Path
from torch import nn

class SlowMLP(nn.Module):
    """An MLP that marks each training batch in a file and sleeps $SLOW_BATCH_SECONDS per batch."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = Path(marker)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        if self.training:
            self.marker.touch()
            time.sleep(float(os.environ.get("SLOW_BATCH_SECONDS", "0")))
        return self.net(x)
'''


@pytest.fixture
def slow_recipe(tmp_path: Path) -> list[str]:
    """CLI args for a run of 305 batches on fake MNIST; the marker appears once training is under way."""
    write_fake_mnist(tmp_path / "data", n_train=2440, n_test=40)
    (tmp_path / "slow_model.py").write_text(SLOW_MODEL)
    return [MLP_RECIPE, "model.name=slow_model:SlowMLP", f"model.args={{marker: {tmp_path / 'marker'}}}",
            f"data.root={tmp_path / 'data'}", "data.batch_size=8", "data.val_size=40", "trainer.epochs=1",
            "trainer.progress=false", "trainer.device=cpu", f"logging.root={tmp_path / 'runs'}"]


def start_and_signal(args: list[str], tmp_path: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Start a run, signal it once its first training batch ran; ~3 s of 10 ms batches remain then."""
    env = {**cli_env(), "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}", "SLOW_BATCH_SECONDS": "0.01"}
    process = subprocess.Popen([sys.executable, "-m", "harness.train", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = tmp_path / "marker"
    deadline = time.monotonic() + HANG_GUARD_S  # a run that never reaches its first batch fails, not hangs
    while not marker.exists() and process.poll() is None:  # wait for the first training batch
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no training batch within {HANG_GUARD_S} s: {process.communicate()[1][-2000:]}")
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_sigterm_mid_epoch_saves_last_pt_and_the_printed_resume_completes(tmp_path: Path,
                                                                          slow_recipe: list[str]) -> None:
    stopped = start_and_signal(slow_recipe, tmp_path, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr
    assert "Traceback" not in stopped.stderr
    last = only_run_dir(tmp_path / "runs") / "checkpoints" / "last.pt"
    assert f"saved {last}" in stopped.stderr and "resume with: python -m harness.train" in stopped.stderr
    state = read_checkpoint(last)
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 305

    # Run the command the message prints, as a user would.
    hint = stopped.stderr.split("resume with: ")[1].split()
    assert hint[:3] == ["python", "-m", "harness.train"] and "--resume" in hint
    env = {**cli_env(), "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    resumed = subprocess.run([sys.executable, *hint[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=HANG_GUARD_S)
    assert resumed.returncode == 0, resumed.stderr
    run_dir = last.parent.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 1
    assert read_checkpoint(last)["batch_in_epoch"] == 0
    assert epochs_logged(run_dir) == [1]


def test_sigint_mid_epoch_exits_130_with_a_resumable_checkpoint(tmp_path: Path, slow_recipe: list[str]) -> None:
    stopped = start_and_signal(slow_recipe, tmp_path, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and "resume with:" in stopped.stderr
    assert read_checkpoint(only_run_dir(tmp_path / "runs") / "checkpoints" / "last.pt")["batch_in_epoch"] > 0


# ------------------------------------------------------------------ bad input: one line, exit 2
def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI in this process; it must exit 2 with exactly one `error:` line on stderr."""
    code = main([*args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def fake_args(fake_data, tmp_path: Path) -> list[str]:
    return [f"data.root={fake_data.root}", "data.batch_size=8", "data.val_size=8", "trainer.epochs=1",
            "trainer.progress=false", "trainer.device=cpu", f"logging.root={tmp_path / 'runs'}"]


@pytest.fixture
def mlp_checkpoint(fake_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main([MLP_RECIPE, *fake_args]) == 0
    capsys.readouterr()
    return only_run_dir(tmp_path / "runs") / "checkpoints" / "last.pt"


def test_resume_from_missing_file(capsys, fake_args, tmp_path: Path) -> None:
    line = cli_error(capsys, MLP_RECIPE, *fake_args, "--resume", str(tmp_path / "nope.pt"))
    assert "checkpoint not found" in line and "nope.pt" in line


def test_resume_from_truncated_or_foreign_files(capsys, fake_args, mlp_checkpoint: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    data = mlp_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    line = cli_error(capsys, MLP_RECIPE, *fake_args, "--resume", str(truncated))
    assert "truncated.pt: cannot be read as a checkpoint" in line

    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    line = cli_error(capsys, MLP_RECIPE, *fake_args, "--resume", str(foreign))
    assert "foreign.pt: not a harness checkpoint" in line and "['a']" in line


def test_resume_with_another_models_checkpoint(capsys, fake_args, mlp_checkpoint: Path, tmp_path: Path) -> None:
    # A CLI checkpoint stores its recipe: the model sections are compared before any data is read.
    line = cli_error(capsys, CNN_RECIPE, *fake_args, "--resume", str(mlp_checkpoint))
    assert "model.name ('mlp' -> 'cnn')" in line and "model.init_from=" in line

    # One written from Python has no recipe: the weights themselves are checked, naming the keys.
    bare = tmp_path / "bare.pt"
    state = read_checkpoint(mlp_checkpoint)
    state["extra"] = {}
    atomic_save(state, bare)
    line = cli_error(capsys, CNN_RECIPE, *fake_args, "--resume", str(bare))
    assert "does not fit this model" in line
    assert "missing keys features.0.0.weight" in line and "unexpected keys net.1.weight" in line


def test_resume_with_more_epochs_than_a_per_step_schedule_spans(capsys, fake_args, mlp_checkpoint: Path) -> None:
    # mnist_mlp.yaml's cosine spans the 1 epoch the checkpoint's run was given; its saved state would win.
    line = cli_error(capsys, MLP_RECIPE, *fake_args, "trainer.epochs=2", "--resume", str(mlp_checkpoint))
    assert "trainer.epochs=2, but the checkpoint's cosine schedule spans trainer.epochs=1" in line


@pytest.mark.parametrize(("override", "expected"), [
    ("scheduler.name=cosinus", "scheduler.name 'cosinus': unknown; choose a class of torch.optim.lr_scheduler"),
    ("trainer.precision=16", "trainer.precision: 16 needs CUDA"),
    ("trainer.monitor=val/nope", "trainer.monitor: 'val/nope' is never logged"),
])
def test_bad_settings_fail_with_one_line(capsys, fake_args, override: str, expected: str) -> None:
    assert expected in cli_error(capsys, MLP_RECIPE, *fake_args, override)


class NotJustTensors:
    """Pickled by reference: loading it would run this module's code, which weights_only refuses."""


def test_a_checkpoint_holding_pickled_objects_is_refused_saying_why(capsys, fake_args, tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"format": "harness-checkpoint-v1", "model": NotJustTensors()}, path)
    line = cli_error(capsys, MLP_RECIPE, *fake_args, "--resume", str(path))
    assert line.startswith(f"error: {path}: cannot be read as a checkpoint (Unsupported global: ")
    assert "NotJustTensors was not an allowed global" in line
    assert line.endswith("; the harness loads only tensors and plain data, never pickled code)")
    assert "weights_only" not in line and "\x1b" not in line  # no advice to turn the check off


def test_a_truncated_checkpoint_gives_the_reason_without_the_advice(capsys, fake_args, tmp_path: Path) -> None:
    data = tmp_path / "data.pt"
    torch.save({"w": torch.zeros(1000)}, data)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data.read_bytes()[:2000])
    line = cli_error(capsys, MLP_RECIPE, *fake_args, "--resume", str(truncated))
    assert line == (f"error: {truncated}: cannot be read as a checkpoint "
                    "(PytorchStreamReader failed reading zip archive: failed finding central directory)")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_checkpoints_get_the_permissions_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_save({"w": torch.zeros(3)}, tmp_path / "checkpoints" / "last.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "checkpoints" / "last.pt").stat().st_mode & 0o777 == mode
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]  # no temporary file left
