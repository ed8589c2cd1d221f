"""What a resume may change, and where it writes: the run folder is the one recorded in the
checkpoint (a copy elsewhere starts a new one), config.yaml records the keys a resume changed, keys
the checkpoint's state would silently override are refused, a torn history line is dropped, no
epoch is logged twice, and a finished run is not tested twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from hang_guard import HANG_GUARD_S
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.core.checkpoint import read_checkpoint
from harness.train import main

MLP_RECIPE = str(REPO / "recipes" / "mnist_mlp.yaml")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def args(fake_data, tmp_path: Path) -> list[str]:
    # scheduler.name=none: a per-epoch-length schedule would refuse a change of trainer.epochs
    return [f"data.root={fake_data.root}", "data.batch_size=8", "data.val_size=8", "trainer.epochs=2",
            "scheduler.name=none", "trainer.progress=false", "trainer.device=cpu", f"logging.root={tmp_path / 'runs'}"]


def train(*argv: str) -> int:
    return main([MLP_RECIPE, *argv])


def run_folders(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs").glob("*/*") if p.is_dir())


def history_epochs(run: Path) -> list[int | None]:
    return [json.loads(line).get("epoch") for line in (run / "history.jsonl").read_text().splitlines()]


def one_error_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_checkpoint_outside_its_run_folder_starts_a_new_one(args, tmp_path: Path, capsys, monkeypatch) -> None:
    assert train(*args, "trainer.epochs=1") == 0
    [run] = run_folders(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    copy = downloads / "last.pt"
    shutil.copy(run / "checkpoints" / "last.pt", copy)
    monkeypatch.chdir(downloads)
    capsys.readouterr()

    assert train(*args, "--resume", "./last.pt") == 0  # relative, as a user types it
    out = capsys.readouterr().out
    assert "lies outside the run folder" in out
    # Nothing written beside the copy or two levels up; the old run folder is untouched.
    assert sorted(p.name for p in downloads.iterdir()) == ["last.pt"]
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["downloads"]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    new = [p for p in run_folders(tmp_path) if p != run]
    assert len(new) == 1
    assert history_epochs(new[0]) == [2, None]  # epoch 2 and the test, in the new folder
    assert read_checkpoint(new[0] / "checkpoints" / "last.pt")["extra"]["run_dir"] == str(new[0].resolve())


def test_a_resume_records_the_changed_keys_in_config_yaml(args, tmp_path: Path, capsys) -> None:
    assert train(*args, "trainer.epochs=1") == 0
    [run] = run_folders(tmp_path)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["epochs"] == 1
    assert train(*args, "trainer.epochs=3", "--resume", str(run / "checkpoints" / "last.pt")) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["epochs"] == 3  # the printed resume command (config.yaml) trains to 3
    # the test line of the first end stays where it was written, after epoch 1
    assert history_epochs(run) == [1, None, 2, 3, None]
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3


@pytest.mark.parametrize(("overrides", "named"), [
    (["optim.lr=0.5", "optim.weight_decay=0.3"], ["optim.lr (0.001 -> 0.5)", "optim.weight_decay (0.0001 -> 0.3)"]),
    (["optim.name=sgd"], ["optim.name ('adamw' -> 'sgd')"]),
    (["data.batch_size=5"], ["data.batch_size (8 -> 5)"]),
    (["trainer.seed=3"], ["trainer.seed (0 -> 3)"]),
    (["trainer.early_stopping={patience: 2}"], ["trainer.early_stopping (None -> unset)"]),
    # the keyword arguments of the optimizer, loss and schedule classes: the checkpoint's state would win
    (["optim.args.eps=1e-6"], ["optim.args.eps (unset -> 1e-06)"]),
    (["loss.args.reduction=sum"], ["loss.args.reduction (unset -> 'sum')"]),
    (["scheduler.interval=epoch"], ["scheduler.interval (None -> 'epoch')"]),
])
def test_a_resume_refuses_what_the_checkpoint_would_silently_override(args, tmp_path: Path, capsys,
                                                                      overrides: list[str], named: list[str]) -> None:
    assert train(*args, "trainer.epochs=1") == 0
    [run] = run_folders(tmp_path)
    capsys.readouterr()
    line = one_error_line(capsys, train(*args, *overrides, "--resume", str(run / "checkpoints" / "last.pt")))
    for part in named:
        assert part in line
    assert "model.init_from=" in line
    assert history_epochs(run) == [1, None]  # nothing trained


def test_a_resume_may_change_the_keys_it_applies(args, tmp_path: Path) -> None:
    assert train(*args, "trainer.epochs=1") == 0
    [run] = run_folders(tmp_path)
    assert train(*args, "trainer.log_every_n_steps=7", "data.eval_batch_size=3", "trainer.grad_clip_norm=1.0",
                 "trainer.threads=1", "--resume", str(run / "checkpoints" / "last.pt")) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["trainer"]["log_every_n_steps"], config["data"]["eval_batch_size"]) == (7, 3)
    assert config["trainer"]["grad_clip_norm"] == 1.0
    assert config["trainer"]["threads"] == 1


def test_a_torn_last_history_line_is_dropped_with_a_note(args, tmp_path: Path, capsys) -> None:
    assert train(*args, "trainer.epochs=1") == 0
    [run] = run_folders(tmp_path)
    history = run / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    history.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed in the middle of the test line
    capsys.readouterr()
    assert train(*args, "--resume", str(run / "checkpoints" / "last.pt")) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    assert history_epochs(run) == [1, 2, None]


def test_no_epoch_is_logged_twice_after_a_kill_between_logging_and_checkpointing(args, tmp_path: Path) -> None:
    assert train(*args, "trainer.epochs=1") == 0
    [run] = run_folders(tmp_path)
    epoch1 = run / "epoch1.pt"
    shutil.copy(run / "checkpoints" / "last.pt", epoch1)
    assert train(*args, "--resume", str(run / "checkpoints" / "last.pt")) == 0  # epoch 2 logged and saved
    # As if killed after logging epoch 2 but before saving it: resume from epoch 1's state.
    shutil.copy(epoch1, run / "checkpoints" / "last.pt")
    epoch1.unlink()
    assert train(*args, "--resume", str(run / "checkpoints" / "last.pt")) == 0
    assert history_epochs(run) == [1, None, 2, None]  # epoch 1 and its test, epoch 2 and its test: once each
    events = EventAccumulator(str(run)).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("test/acc")] == [1, 2]


def test_resuming_a_finished_run_says_so_and_tests_nothing_again(args, tmp_path: Path, capsys) -> None:
    assert train(*args) == 0
    [run] = run_folders(tmp_path)
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train(*args, "--resume", str(run / "checkpoints" / "last.pt")) == 0
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix != ".yaml"} == \
        {k: v for k, v in files.items() if not k.endswith(".yaml")}
    assert history_epochs(run) == [1, 2, None]


def _cli(*argv: str, kill: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HARNESS_KILL_AT", None)
    if kill:
        env["HARNESS_KILL_AT"] = kill
    return subprocess.run([sys.executable, "-m", "harness.train", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)


def test_sigterm_during_the_final_test_says_how_to_finish_and_the_resume_tests_once(args, tmp_path: Path) -> None:
    stopped = _cli(MLP_RECIPE, *args, kill="run:testing:1:TERM")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    [line] = stopped.stderr.strip().splitlines()
    assert line.startswith("interrupted by SIGTERM outside the training loop") and "--resume" in line
    [run] = run_folders(tmp_path)
    assert not (run / "summary.json").exists()
    command = line.split("to run the test: ", 1)[1].split()
    assert command[:3] == ["python", "-m", "harness.train"]
    finished = _cli(*command[3:])
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert history_epochs(run) == [1, 2, None]
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


def test_sigterm_while_starting_up_is_one_line_and_leaves_no_run_folder(args, tmp_path: Path) -> None:
    stopped = _cli(MLP_RECIPE, *args, kill="run:building:1:TERM")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    [line] = stopped.stderr.strip().splitlines()
    assert line.startswith("interrupted by SIGTERM outside the training loop")
    assert run_folders(tmp_path) == []
