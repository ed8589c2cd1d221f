"""What every command does with errors: one line on stderr and a meaningful exit code."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from harness.errors import HarnessError

EXIT_BAD_INPUT = 2


def run_command(command: Callable[[], Any]) -> int:
    """Run `command`; bad input -> exit 2, NaN halt -> 1, SIGINT -> 130, SIGTERM -> 143. No tracebacks
    for these; a genuine bug still shows its traceback.

    A torchrun worker (a process group is up when the command ends) tears the group down after the
    other ranks have finished too and then exits at once with its code: see
    `harness.distributed.exit_without_finalizing` for why it must not go through interpreter shutdown.
    """
    # Inside the function: these import torch, and `--help` should not wait for it.
    from harness.distributed import cleanup, exit_without_finalizing, is_main_process, process_group_is_up
    from harness.trainer import NonFiniteLossError, TrainingInterrupted

    code = 1  # a genuine bug: the traceback propagates, and a torchrun worker still exits non-zero
    try:
        command()
        code = 0
    except (HarnessError, NonFiniteLossError) as e:
        # Under torchrun every rank meets the same bad input (and NaN halts are agreed across ranks):
        # say it once, from rank 0.
        if is_main_process() and os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT if isinstance(e, HarnessError) else 1
    except TrainingInterrupted as e:
        code = 128 + e.signum
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    finally:
        worker = process_group_is_up()
        cleanup(succeeded=code == 0)
        if worker:
            if sys.exc_info()[0] is not None:  # a genuine bug: show its traceback before leaving
                import traceback

                traceback.print_exc()
            exit_without_finalizing(code)
    return code
