"""Where scalars go: a tiny interface, `log(scalars, step)` and `close()`, and its two writers.

TensorBoard is imported only when a TensorBoardLogger is made (it costs a second of start-up).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Protocol

from harness.core import faults
from harness.core.checkpoint import atomic_save
from harness.errors import HarnessError


class Logger(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


def finite_or_none(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None, through dicts, lists and tuples."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(value) for value in data]
    return data


def strict_json(data: Any, indent: int | None = None) -> str:
    """JSON that every parser reads: a non-finite float becomes null (Python's json would write a
    bare NaN or Infinity, which is not JSON); allow_nan=False guards against anything left."""
    return json.dumps(finite_or_none(data), indent=indent, allow_nan=False)


class JsonlLogger:
    """Appends one JSON object per `log` call to a file, flushed at once so a crash loses nothing.
    Strict JSON: a NaN or infinite scalar is written as null.

    purge_step: on resume, lines at or after this step are dropped first — a run killed between
    logging an epoch and checkpointing it would otherwise repeat that epoch (as TensorBoard's purge_step).
    """

    def __init__(self, path: str | Path, purge_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if purge_step is not None and self.path.is_file():
            kept = [line for line in _whole_lines(self.path) if json.loads(line).get("step", 0) < purge_step]
            atomic_save("".join(kept).encode(), self.path, raw=True)
        self._file = self.path.open("a")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self._file.write(strict_json({"step": step, **scalars}) + "\n")
        self._file.flush()
        faults.reached("history:written")

    def close(self) -> None:
        self._file.close()


def _whole_lines(path: Path) -> list[str]:
    """The lines of a history file, without a torn last line (the process died while writing it:
    dropped with a note). Any other line that is not JSON is damage the harness did not do: an error."""
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.strip()]
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                print(f"note: {path}: dropped a torn last line (the run was killed while writing it): "
                      f"{line.strip()[:80]!r}", file=sys.stderr, flush=True)
                return lines[:-1]
            raise HarnessError(f"{path}: line {i + 1} is not JSON ({line.strip()[:80]!r}); "
                               "the file was changed by hand or damaged") from None
    return [line if line.endswith("\n") else line + "\n" for line in lines]


class TensorBoardLogger:
    """Scalars (and the odd image, text or HParams row) to TensorBoard event files: view them with
    `tensorboard --logdir runs`. The one place in the harness that opens a SummaryWriter."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, filename_suffix: str = "") -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (heavy: only when a run logs)

        # purge_step: on resume, TensorBoard drops any events at or after it that a killed run left
        # behind, so the continued curve has no duplicate steps.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, filename_suffix=filename_suffix)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            if name not in ("epoch", "step"):  # the x-axis already: a scalar of it would draw a diagonal line
                self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()
        faults.reached("tensorboard:flushed")

    def layout(self, charts: dict[str, list[str]], category: str = "run") -> None:
        """The custom-scalars dashboard (TensorBoard's CUSTOM SCALARS tab): chart title -> the scalar tags
        it draws, as lines on one chart. Once per run: each call adds a layout."""
        exact = {title: ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]] for title, tags in charts.items()}
        self.writer.add_custom_scalars({category: exact})
        self.writer.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Markdown in the TEXT tab (a code block keeps YAML as it is: indent it by four spaces)."""
        self.writer.add_text(tag, text, global_step=step)
        self.writer.flush()

    def run_hparams(self, hparams: dict[str, Any], metric_tags: list[str]) -> None:
        """This run's row of the HPARAMS tab, in its own folder: `hparams` (values that are not a number,
        string or bool are written as text) and the scalar tags whose last values are its metrics.

        The one way the harness writes HParams: a metric is named by the tag of the scalar it shows
        (`val/acc`, `test/loss`), never by a copy under another name (`add_hparams` would write each
        value again as a scalar, in a sub-folder of its own)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries  # noqa: PLC0415  (as above)

        plain = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                 for key, value in hparams.items()}
        # The metric values are not written here: TensorBoard reads each from the run's scalar of that tag.
        experiment, start, _ = hparams_summaries(plain, dict.fromkeys(metric_tags, 0.0))
        # the run's own event file, not a sub-folder as add_hparams would make
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)
        self.writer.flush()

    def image(self, tag: str, image: Any, step: int) -> None:
        """An (H, W, 3) uint8 array, e.g. a rendered figure."""
        self.writer.add_image(tag, image, global_step=step, dataformats="HWC")

    def pr_curve(self, tag: str, labels: Any, probabilities: Any, step: int, num_thresholds: int = 127) -> None:
        """A precision-recall curve for TensorBoard's PR CURVES tab: `labels` (bool, the positives) and
        `probabilities` in [0, 1] of the same samples. The plugin stores TP, FP, TN and FN at each of
        `num_thresholds` evenly spaced thresholds (127 at most: torch's writer caps it there), so the ROC
        curve of the same samples can be read from it too."""
        self.writer.add_pr_curve(tag, labels, probabilities, global_step=step, num_thresholds=num_thresholds)

    def close(self) -> None:
        self.writer.close()
