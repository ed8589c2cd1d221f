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
    for these; a genuine bug still shows its traceback."""
    from harness.distributed import cleanup, is_main_process
    from harness.trainer import NonFiniteLossError, TrainingInterrupted

    try:
        command()
    except (HarnessError, NonFiniteLossError) as e:
        # Under torchrun every rank meets the same bad input (and NaN halts are agreed across ranks):
        # say it once, from rank 0.
        if is_main_process() and os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(e, HarnessError) else 1
    except TrainingInterrupted as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        cleanup()
    return 0
