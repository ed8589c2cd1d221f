"""Named points of the checkpoint protocol where a test can kill the process, to prove that a run
killed at any of them resumes to the same files as an uninterrupted run.

`HARNESS_KILL_AT=<point>:<n>` sends SIGKILL to this process the n-th time it reaches `<point>`
(n counts from 1); `<point>:<n>:TERM` (or INT) sends that signal instead. Under torchrun every rank
reads it; `HARNESS_KILL_RANK=<r>` limits it to rank r. Unset, as in every normal run, `reached` is one
dictionary lookup.
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
SHARDED_POINTS = (  # a sharded save (harness.core.sharded_checkpoint), on every rank or on rank 0
    "sharded:shards-written",  # this rank's slice and RNG file are in the temporary folder (every rank)
    "sharded:renamed",  # the new folder is in place, the link still points at the previous one (rank 0)
    "sharded:linked",  # the link points at the new folder; the old one is not removed yet (rank 0)
)
OTHER_POINTS = (
    "run:building",  # the run folder exists; the model, data and Trainer are being built
    "run:testing",  # training is done and saved; the final test is about to run
)
_seen: Counter[str] = Counter()


def reached(point: str) -> None:
    """Count one arrival at `point`; die at once if HARNESS_KILL_AT names this arrival."""
    wanted = os.environ.get("HARNESS_KILL_AT")
    if not wanted:
        return
    only = os.environ.get("HARNESS_KILL_RANK")
    if only is not None and os.environ.get("RANK", "0") != only:
        return
    _seen[point] += 1
    name, count, signame = _parse(wanted)
    if name == point and _seen[point] == count:
        os.kill(os.getpid(), signal.Signals[f"SIG{signame}"])


def _parse(wanted: str) -> tuple[str, int, str]:
    """"save:renamed:3" -> ("save:renamed", 3, "KILL"); "run:testing:1:TERM" -> ("run:testing", 1, "TERM")."""
    parts = wanted.split(":")
    signame = parts.pop() if parts[-1].isalpha() and parts[-1].isupper() else "KILL"
    count = int(parts.pop()) if parts[-1].isdigit() else 1
    return ":".join(parts), count, signame
