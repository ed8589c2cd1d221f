"""Pictures of results, drawn with matplotlib's Agg canvas: no window, no pyplot state.

matplotlib is imported inside each function: a run that draws nothing never pays for it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from harness.core.checkpoint import atomic_save
from harness.metrics.functional import calibration_error_from_bins, normalize_confusion_matrix

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
    """Write a Figure as PNG with the Agg canvas, atomically (a temporary file, then a rename)."""
    return save_png(figure_to_array(fig), path)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 array (a figure rendered once by `figure_to_array`, say) as PNG, atomically."""
    from PIL import Image  # noqa: PLC0415  (Pillow comes with matplotlib; only when a picture is written)

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    atomic_save(buffer.getvalue(), path, raw=True)
    return Path(path)


def reliability_figure(confidence_sum: Sequence[float], correct: Sequence[int], count: Sequence[int],
                       title: str = "") -> Figure:
    """The reliability diagram of a `CalibrationError`'s bins: per equal-width bin of the top-1 confidence,
    the accuracy (bars) against the mean confidence (the gap, hatched); the bin counts below.

    The ECE written on it is `calibration_error_from_bins` of these bins, the function the metric's
    `compute()` uses, so it is the metric's value for the same samples (MCE beside it).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (as above)

    conf_sum = torch.as_tensor(confidence_sum, dtype=torch.float64)
    hits, samples = torch.as_tensor(correct, dtype=torch.int64), torch.as_tensor(count, dtype=torch.int64)
    ece = calibration_error_from_bins(conf_sum, hits, samples, "l1").item()
    mce = calibration_error_from_bins(conf_sum, hits, samples, "max").item()
    n_bins, filled = len(samples), (samples > 0).numpy()
    lefts = np.arange(n_bins) / n_bins
    accuracy = (hits.double() / samples.clamp(min=1)).numpy()
    confidence = (conf_sum / samples.clamp(min=1)).numpy()

    fig = Figure(figsize=(5.5, 6.5), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.bar(lefts[filled], accuracy[filled], width=1 / n_bins, align="edge", color="tab:blue",
            edgecolor="black", label="accuracy")
    gap = confidence - accuracy
    top.bar(lefts[filled], gap[filled], bottom=accuracy[filled], width=1 / n_bins, align="edge", fill=False,
            hatch="//", edgecolor="tab:red", label="gap to the mean confidence")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy in the bin")
    top.legend(loc="upper left", fontsize=8)
    # upper left, under the legend: bars of an over-confident model stay below the diagonal there
    top.text(0.03, 0.78, f"ECE {ece:.4f}\nMCE {mce:.4f}\n{n_bins} bins, {int(samples.sum())} samples",
             ha="left", va="top", transform=top.transAxes, fontsize=9,
             bbox={"facecolor": "white", "edgecolor": "grey"})
    if title:
        top.set_title(title)
    bottom.bar(lefts, samples.numpy(), width=1 / n_bins, align="edge", color="grey", edgecolor="black")
    if samples.max() > 0:
        bottom.set_yscale("log")  # one bin near 1 usually holds most samples
    bottom.set(xlabel="top-1 confidence", ylabel="samples")
    return fig


def per_class_figure(values: Sequence[float | None], classes: Sequence[str], metric: str,
                     support: Sequence[int] = (), title: str = "") -> Figure:
    """One row per class, a dot at its value and the value written beside it: a per-class result
    (precision, recall, F1, ...) in one picture instead of one chart per class. The axis ends at 1 and
    starts at 0, or closer to 1 when every value is high (`zoomed_lower_limit`), so that 0.982 and
    0.998 look different. `support` is shown beside each class name when given; None (undefined) is
    drawn as no dot and written "n/a"."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (as above)

    n = len(classes)
    fig = Figure(figsize=(6.5, max(2.5, 0.32 * n + 1.4)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    numbers = np.array([np.nan if v is None else v for v in values], dtype=float)
    lower = zoomed_lower_limit(numbers)
    rows = np.arange(n)
    ax.hlines(rows, lower, np.nan_to_num(numbers, nan=lower), color="lightgrey", linewidth=2)
    ax.plot(numbers, rows, "o", color="tab:blue")
    labels = [f"{name} ({s})" for name, s in zip(classes, support, strict=True)] if support else list(classes)
    ax.set_yticks(rows, labels=labels, fontsize=8 if n <= 30 else 6)
    ax.invert_yaxis()  # the first class on top, as in the printed table
    width = 1 - lower
    for row, value in zip(rows, numbers, strict=True):
        finite = bool(np.isfinite(value))
        ax.text(value + 0.02 * width if finite else lower + 0.01 * width, row,
                f"{value:.4f}" if finite else "n/a", va="center", fontsize=8)
    ax.set(xlim=(lower, 1 + 0.14 * width), xlabel=metric if lower == 0 else f"{metric} (the axis starts at {lower:g})")
    ax.set_xticks(np.linspace(lower, 1, 6))
    ax.grid(axis="x", color="whitesmoke")
    if title:
        ax.set_title(title)
    return fig


def zoomed_lower_limit(values: np.ndarray) -> float:
    """Where a 0-1 axis for `values` starts: a round number below them that leaves the smallest at least
    a third of the way along (0.9822 -> 0.97, all 1.0 -> 0.99), or 0 when that would be under 0.5."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0
    room = max(1.5 * (1 - finite.min()), 0.01)  # from the limit to 1
    step = 10 ** np.floor(np.log10(room))
    lower = round(1 - np.ceil(room / step) * step, 10)
    return float(lower) if lower >= 0.5 else 0.0


def roc_figure(curves: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[str], aurocs: Sequence[float | None],
               title: str = "") -> Figure:
    """ROC curves, one class against the rest, one line per class: `curves` holds each class's
    (false positive rate, true positive rate) arrays; the legend gives each class's AUROC."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (as above)

    fig = Figure(figsize=(6.5, 5.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    for (fpr, tpr), name, auroc in zip(curves, classes, aurocs, strict=True):
        ax.plot(fpr, tpr, label=f"{name}: {'n/a' if auroc is None else f'{auroc:.4f}'}", linewidth=1.2)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(title="AUROC, one vs rest", loc="lower right", fontsize=7 if len(classes) <= 12 else 5)
    if title:
        ax.set_title(title)
    return fig


def image_grid_figure(images: np.ndarray, captions: Sequence[str], title: str = "", columns: int = 4) -> Figure:
    """Images (k, C, H, W) with C = 1 or 3 and values in [0, 1], in a grid, each under its caption
    (two lines fit). One mosaic in one axes: a grid of subplots takes several times longer to draw."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (as above)

    k, channels, h, w = images.shape
    cols = max(1, min(columns, k))
    rows = max(1, -(-k // cols))
    tile_inches = 1.9  # the width of one image and its gap
    gap = max(2, w // 8)
    caption = int(np.ceil(0.36 / (tile_inches / (w + gap))))  # pixels above each image for two caption lines
    mosaic = np.ones((rows * (h + caption), cols * (w + gap), 3))
    for i, image in enumerate(images):  # k pictures to place (k is small), not samples
        top, left = (i // cols) * (h + caption) + caption, (i % cols) * (w + gap) + gap // 2
        pixels = image[0][..., None] if channels == 1 else np.transpose(image, (1, 2, 0))
        mosaic[top : top + h, left : left + w] = pixels.clip(0.0, 1.0)
    width = cols * tile_inches
    height = width * mosaic.shape[0] / mosaic.shape[1]
    head = 0.45 if title else 0.05  # inches above the mosaic
    fig = Figure(figsize=(width, height + head), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + head)))
    ax.set_axis_off()
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    for i, text in enumerate(captions[:k]):
        top, left = (i // cols) * (h + caption) + caption, (i % cols) * (w + gap) + gap // 2
        # pixel j of imshow spans [j - 0.5, j + 0.5]: centred over the image, just above its top edge
        ax.text(left + (w - 1) / 2, top - 0.5, text, ha="center", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / (height + head), va="top")
    return fig
