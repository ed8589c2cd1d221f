"""What every command shares: its argument parser's frame, and errors as one line on stderr with a
meaningful exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from harness.errors import CheckFailed, HarnessError, Interrupted

EXIT_BAD_INPUT = 2


def command_parser(command: str, description: str, examples: str) -> argparse.ArgumentParser:
    """The parser of `python -m harness.<command>`: its one-line description, then the examples after
    the options (kept as written)."""
    return argparse.ArgumentParser(prog=f"python -m harness.{command}", description=description, epilog=examples,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(command: Callable[[], int | None]) -> int:
    """Run `command`; bad input -> exit 2, NaN halt or a failed self-check -> 1, SIGINT -> 130,
    SIGTERM -> 143. No tracebacks for these; a genuine bug still shows its traceback. A command that
    finished but must report a failure (compare: one model failed) returns its exit code; None is success.

    A torchrun worker (a process group is up when the command ends) tears the group down after the
    other ranks have finished too and then exits at once with its code: see
    `harness.core.distributed.exit_without_finalizing` for why it must not go through interpreter shutdown.
    """
    # Imported here, not at the top: these import torch, and `--help` should not wait for it.
    from harness.core.distributed import (  # noqa: PLC0415
        cleanup,
        exit_without_finalizing,
        is_main_process,
        process_group_is_up,
    )
    from harness.core.trainer import NonFiniteLossError, TrainingInterrupted  # noqa: PLC0415

    code = 1  # a genuine bug: the traceback propagates, and a torchrun worker still exits non-zero
    previous = _raise_on_signals()
    try:
        returned = command()
        code = returned if isinstance(returned, int) else 0
    except (HarnessError, NonFiniteLossError, CheckFailed) as e:
        # Under torchrun every rank meets the same bad input (and NaN halts are agreed across ranks):
        # say it once, from rank 0.
        if is_main_process() and os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT if isinstance(e, HarnessError) else 1
    except TrainingInterrupted as e:
        code = 128 + e.signum
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        hint = f"; {e.hint}" if isinstance(e, Interrupted) and e.hint else ""
        if is_main_process() and os.environ.get("RANK", "0") == "0":
            print(f"interrupted by {signal.Signals(signum).name} outside the training loop (while starting up, "
                  f"testing or writing reports): every file written so far is whole{hint}", file=sys.stderr)
        code = 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        worker = process_group_is_up()
        cleanup(succeeded=code == 0)
        if worker:
            if sys.exc_info()[0] is not None:  # a genuine bug: show its traceback before leaving
                traceback.print_exc()
            exit_without_finalizing(code)
    return code


def _raise_on_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM raise `Interrupted` (until the command ends), so a signal outside the
    training loop ends with one line and 130 / 143 instead of silence; returns the previous handlers.
    The Trainer installs its own handlers for the loop and puts these back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    return {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
