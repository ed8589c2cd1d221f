"""Classification reports from one confusion matrix: the figures, the text table, the picture.

`classification_summary(confmat, classes)` derives everything per class and averaged from a
`(C, C)` count matrix with `harness.metrics.functional` (no metric math here);
`format_classification_report` lays it out like scikit-learn's `classification_report`;
`format_confusion_matrix` prints the counts; `confusion_matrix_figure` draws the row-normalised
matrix with matplotlib (imported only there, drawn with the Agg canvas: no window, no pyplot state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.metrics.functional import normalize_confusion_matrix, precision_recall_f1_from_confmat

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

AVERAGES = ("micro", "macro", "weighted")


def classification_summary(confmat: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str]) -> dict[str, Any]:
    """Per-class and averaged precision / recall / F1 of a confusion matrix, as plain data.

    `confmat` holds counts, rows = true class, columns = predicted (sklearn's layout). Returns
    `{"accuracy", "support", "per_class": {name: {precision, recall, f1, support}},
    "averages": {micro|macro|weighted: {precision, recall, f1}}}`; the same numbers as
    `sklearn.metrics.classification_report(..., labels=range(C), output_dict=True, zero_division=0)`.
    """
    confmat = torch.as_tensor(confmat, dtype=torch.int64)
    if confmat.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {tuple(confmat.shape)} for {len(classes)} classes")
    precision, recall, f1 = precision_recall_f1_from_confmat(confmat, "none")
    support = confmat.sum(dim=1)
    per_class = {
        name: {"precision": p, "recall": r, "f1": f, "support": s}
        for name, p, r, f, s in zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist(),
                                    strict=True)
    }
    averages = {}
    for average in AVERAGES:
        p, r, f = precision_recall_f1_from_confmat(confmat, average)
        averages[average] = {"precision": p.item(), "recall": r.item(), "f1": f.item()}
    return {
        # Single-label: every sample is one TP or one FP + FN, so micro recall is the accuracy.
        "accuracy": averages["micro"]["recall"],
        "support": int(support.sum()),
        "per_class": per_class,
        "averages": averages,
    }


def format_classification_report(summary: dict[str, Any], digits: int = 4) -> str:
    """The table of `classification_summary`, laid out like sklearn's `classification_report`,
    with a `micro avg` row added under `accuracy`."""
    names = [*summary["per_class"], "weighted avg"]
    width = max(len(name) for name in names)
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"

    def row(name: str, p: float, r: float, f: float, support: int) -> str:
        return f"{name:>{width}} {p:>9.{digits}f} {r:>9.{digits}f} {f:>9.{digits}f} {support:>9}"

    lines = [head, ""]
    for name, c in summary["per_class"].items():
        lines.append(row(name, c["precision"], c["recall"], c["f1"], c["support"]))
    lines.append("")
    total = summary["support"]
    lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {summary['accuracy']:>9.{digits}f} {total:>9}")
    for average in AVERAGES:
        a = summary["averages"][average]
        lines.append(row(f"{average} avg", a["precision"], a["recall"], a["f1"], total))
    return "\n".join(lines)


def format_confusion_matrix(confmat: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The counts as a text table: rows = true class (named), columns = predicted (by index)."""
    confmat = torch.as_tensor(confmat, dtype=torch.int64)
    corner = "true \\ predicted"
    width = max(len(corner), *(len(name) for name in classes))
    cell = max(len(str(int(confmat.max()))), len(str(len(classes) - 1))) + 1
    head = f"{corner:>{width}} " + "".join(f"{i:>{cell}}" for i in range(len(classes)))
    rows = [f"{name:>{width}} " + "".join(f"{v:>{cell}}" for v in counts)
            for name, counts in zip(classes, confmat.tolist(), strict=True)]
    return "\n".join([head, *rows])


def confusion_matrix_figure(confmat: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str],
                            title: str = "") -> Figure:
    """The confusion matrix normalised by rows (each true class sums to 100 %), as a matplotlib Figure.

    Colour and cell text are the row percentage (cells under 0.05 % are left blank); the y labels
    carry each class's support. Rows = true class, columns = predicted, class names on both axes.
    """
    from matplotlib.figure import Figure

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
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a Figure as PNG with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).print_png(str(path))
    return Path(path)
