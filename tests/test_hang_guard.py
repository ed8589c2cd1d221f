"""The tests' hang guard kills a hung command's whole process group (torchrun's ranks, not only the launcher)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import hang_guard
import pytest
from hang_guard import HANG_GUARD_S, kill_group

SPAWNS_A_SLEEPER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {HANG_GUARD_S} s"
        time.sleep(0.05)


def test_kill_group_ends_the_grandchildren_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", SPAWNS_A_SLEEPER, str(pid_file)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the grandchild's pid")
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    kill_group(proc)
    proc.wait()
    _wait_for(lambda: not _alive(grandchild), "the grandchild's end")
    kill_group(proc)  # a group already gone is no error


def test_run_guarded_fails_a_hung_command_and_leaves_nothing_running(tmp_path: Path, monkeypatch) -> None:
    pid_file = tmp_path / "child.pid"
    monkeypatch.setattr(hang_guard, "HANG_GUARD_S", 0)  # the guard strikes at once: the command is still running
    with pytest.raises(AssertionError, match="still running after 0 s"):
        hang_guard.run_guarded([sys.executable, "-c", SPAWNS_A_SLEEPER, str(pid_file)])
    if pid_file.exists() and pid_file.read_text():  # the grandchild had started before the kill
        _wait_for(lambda: not _alive(int(pid_file.read_text())), "the grandchild's end")


def test_run_guarded_returns_what_the_command_wrote() -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    done = hang_guard.run_guarded([sys.executable, "-c", code], env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
