"""Where scalars go: a tiny interface, `log(scalars, step)` and `close()`, and its two writers.

TensorBoard is imported only when a TensorBoardLogger is made (it costs a second of start-up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """Appends one JSON object per `log` call to a file, flushed at once so a crash loses nothing.

    purge_step: on resume, lines at or after this step are dropped first — a run killed between
    logging an epoch and checkpointing it would otherwise repeat that epoch (as TensorBoard's purge_step).
    """

    def __init__(self, path: str | Path, purge_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if purge_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", 0) < purge_step]
            self.path.write_text("".join(kept))
        self._file = self.path.open("a")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Scalars (and the odd image or hparams row) to TensorBoard event files: view them with
    `tensorboard --logdir runs`. The one place in the harness that opens a SummaryWriter."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, filename_suffix: str = "") -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (heavy: only when a run logs)

        # purge_step: on resume, TensorBoard drops any events at or after it that a killed run left
        # behind, so the continued curve has no duplicate steps.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, filename_suffix=filename_suffix)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def image(self, tag: str, image: Any, step: int) -> None:
        """An (H, W, 3) uint8 array, e.g. a rendered figure."""
        self.writer.add_image(tag, image, global_step=step, dataformats="HWC")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], run_name: str) -> None:
        """One row of TensorBoard's HPARAMS tab, written into the sub-folder `run_name`."""
        self.writer.add_hparams(hparams, metrics, run_name=run_name)

    def close(self) -> None:
        self.writer.close()
