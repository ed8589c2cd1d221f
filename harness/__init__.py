"""harness: a small, fast, readable PyTorch training-and-evaluation harness.

    from harness import EarlyStopping, ModelCheckpoint, Trainer, fit_and_test, new_run_folder, seed_everything
    from harness.metrics import Accuracy

Names are imported on first use (PEP 562), so `import harness` and `python -m harness.train --help`
stay fast: torch is loaded when you first touch `harness.Trainer`.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "Callback",
    "EarlyStopping",
    "HarnessError",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "fit_and_test",
    "new_run_folder",
    "seed_everything",
]

_LAZY = {
    "Trainer": "harness.core.trainer",
    "NonFiniteLossError": "harness.core.trainer",
    "TrainingInterrupted": "harness.core.trainer",
    "Callback": "harness.core.callbacks",
    "ModelCheckpoint": "harness.core.callbacks",
    "EarlyStopping": "harness.core.callbacks",
    "seed_everything": "harness.core.seed",
    "fit_and_test": "harness.core.run",
    "new_run_folder": "harness.core.run",
    "HarnessError": "harness.errors",
}

if TYPE_CHECKING:
    from harness.core.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from harness.core.run import fit_and_test, new_run_folder
    from harness.core.seed import seed_everything
    from harness.core.trainer import NonFiniteLossError, Trainer, TrainingInterrupted
    from harness.errors import HarnessError


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
