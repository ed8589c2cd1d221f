"""harness: a small, fast, readable PyTorch training-and-evaluation harness.

    from harness import Trainer
    from harness.metrics import Accuracy

Names are imported on first use (PEP 562), so `import harness` and `python -m harness.train --help`
stay fast: torch is loaded when you first touch `harness.Trainer`.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Callback", "HarnessError", "NonFiniteLossError", "Trainer", "TrainingInterrupted"]

_LAZY = {
    "Trainer": "harness.trainer",
    "NonFiniteLossError": "harness.trainer",
    "TrainingInterrupted": "harness.trainer",
    "Callback": "harness.callbacks",
    "HarnessError": "harness.errors",
}

if TYPE_CHECKING:
    from harness.callbacks import Callback
    from harness.errors import HarnessError
    from harness.trainer import NonFiniteLossError, Trainer, TrainingInterrupted


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
