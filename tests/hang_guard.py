"""The one time limit tests put on a subprocess, a thread or a server: a guard against a hang.

It is not a speed limit. On a 2-core machine shared with other jobs (load average 14) starting a
Python process that imports torch has taken more than 120 s, so a bound that any real hang
exceeds and no slow machine reaches: a hung test still fails, minutes later instead of never.

`run_guarded` runs a command in a session of its own: when the guard strikes, the whole process
group is killed (torchrun's ranks too, not only the launcher), so a hung job cannot keep the
machine's cores busy under the tests that follow.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

HANG_GUARD_S = 900


def run_guarded(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(cmd, capture_output=True, text=True, **kwargs)` within HANG_GUARD_S; past it, the
    command's process group is killed and the test fails with the tail of what it wrote to stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    out, err = communicate_guarded(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def communicate_guarded(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """`proc.communicate()` within HANG_GUARD_S (`proc` started with start_new_session=True); past it, its
    process group is killed and the test fails with the tail of its stderr."""
    try:
        return proc.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        _, err = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, proc.args[:6]))} ... still running after {HANG_GUARD_S} s "
                             f"(a hang); killed with its process group. stderr:\n{err[-3000:]}") from None


def kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill `proc` and every process of its session (started with start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
