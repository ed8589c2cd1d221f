"""Pictures of results, drawn with matplotlib's Agg canvas: no window, no pyplot state.

matplotlib is imported inside each function: a run that draws nothing never pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from harness.metrics.functional import normalize_confusion_matrix

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def confusion_matrix_figure(confmat: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str],
                            title: str = "") -> Figure:
    """The confusion matrix normalised by rows (each true class sums to 100 %), as a matplotlib Figure.

    Colour and cell text are the row percentage (cells under 0.05 % are left blank); the y labels
    carry each class's support. Rows = true class, columns = predicted, class names on both axes.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (matplotlib: only when a picture is drawn)

    counts = torch.as_tensor(confmat, dtype=torch.int64)
    rows = 100 * normalize_confusion_matrix(counts, "true").numpy()  # percent of each true class
    n = len(classes)
    size = max(4.0, 0.6 * n + 2.5)  # inches: room for names and a cell per class
    fig = Figure(figsize=(size, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=100.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class (row)")
    support = counts.sum(dim=1).tolist()
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=[f"{name} ({s})" for name, s in zip(classes, support, strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (support)")
    if title:
        ax.set_title(title)
    fontsize = 8 if n <= 12 else 6
    for i in range(n):
        for j in range(n):
            if rows[i, j] >= 0.05:
                colour = "white" if rows[i, j] > 50 else "black"
                ax.text(j, i, f"{rows[i, j]:.1f}", ha="center", va="center", fontsize=fontsize, color=colour)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a Figure with the Agg canvas to an RGB uint8 array (H, W, 3), e.g. for TensorBoard."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (as above)

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a Figure as PNG with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (as above)

    FigureCanvasAgg(fig).print_png(str(path))
    return Path(path)
