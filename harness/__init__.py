"""harness: a small, fast, readable PyTorch training-and-evaluation harness.

    from harness import Trainer
    from harness.metrics import Accuracy

Names are imported on first use (PEP 562), so `import harness` and `python -m harness.train --help`
stay fast: torch is loaded when you first touch `harness.Trainer`.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Callback", "HarnessError", "NonFiniteLossError", "Trainer", "TrainingInterrupted"]

_LAZY = {
    "Trainer": "harness.core.trainer",
    "NonFiniteLossError": "harness.core.trainer",
    "TrainingInterrupted": "harness.core.trainer",
    "Callback": "harness.core.callbacks",
    "HarnessError": "harness.errors",
}

if TYPE_CHECKING:
    from harness.core.callbacks import Callback
    from harness.core.trainer import NonFiniteLossError, Trainer, TrainingInterrupted
    from harness.errors import HarnessError


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
