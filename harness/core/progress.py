"""Progress display: a tqdm bar per epoch on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm


class EpochProgress:
    """Wraps a batch iterable. `refresh(loss)` is called only every `log_every_n_steps` steps,
    because reading the loss for display is a device-to-host sync."""

    def __init__(self, batches: Iterable[Any], total: int | None, desc: str, enabled: bool = True) -> None:
        self.batches = batches
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(batches, total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.bar if self.bar is not None else self.batches)

    def refresh(self, **values: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def close(self, summary: str) -> None:
        """End of the epoch's training: the bar shows the summary and closes. Without a bar nothing is
        printed here: the Trainer prints one line per epoch once validation is done."""
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=True)
            self.bar.close()
