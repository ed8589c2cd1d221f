"""Named points of the checkpoint protocol where a test can kill the process, to prove that a run
killed at any of them resumes to the same files as an uninterrupted run.

`HARNESS_KILL_AT=<point>:<n>` sends SIGKILL to this process the n-th time it reaches `<point>`
(n counts from 1). Unset, as in every normal run, `reached` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = (
    "save:temp-written",  # a checkpoint's temporary file is written and fsynced, not yet renamed
    "save:renamed",  # the rename is done
    "best:written",  # best.pt is written, last.pt not yet
    "history:written",  # an epoch's line is in history.jsonl
    "tensorboard:flushed",  # an epoch's scalars are flushed to the event file
)
_seen: Counter[str] = Counter()


def reached(point: str) -> None:
    """Count one arrival at `point`; die at once if HARNESS_KILL_AT names this arrival."""
    wanted = os.environ.get("HARNESS_KILL_AT")
    if not wanted:
        return
    _seen[point] += 1
    name, _, count = wanted.rpartition(":")
    if name == point and _seen[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
