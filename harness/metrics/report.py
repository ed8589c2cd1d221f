"""Classification reports from one confusion matrix: the figures and the text table.

`classification_summary(confmat, classes)` derives everything per class and averaged from a
`(C, C)` count matrix with `harness.metrics.functional` (no metric math here);
`format_classification_report` lays it out like scikit-learn's `classification_report`;
`format_confusion_matrix` prints the counts; `most_confused_pairs` finds its largest off-diagonal
cells. (The picture of the matrix is drawn by
`harness.core.figures.confusion_matrix_figure`.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from harness.metrics.functional import precision_recall_f1_from_confmat

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


def most_confused_pairs(confmat: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str],
                        n: int = 10) -> list[dict[str, Any]]:
    """The `n` largest off-diagonal cells of a confusion matrix (rows = true class): which true class is
    most often predicted as which other one. Cells with no sample are left out.

    Returns, largest count first (ties: in row-major order), `{"true", "predicted"` (class names),
    `"true_index", "predicted_index", "count", "share_of_true"}`: count over the true class's support.
    """
    confmat = torch.as_tensor(confmat, dtype=torch.int64)
    c = confmat.shape[0]
    off_diagonal = confmat.masked_fill(torch.eye(c, dtype=torch.bool, device=confmat.device), 0).flatten()
    order = torch.argsort(off_diagonal, descending=True, stable=True)[:n]
    support = confmat.sum(dim=1)
    pairs = []
    for cell, count in zip(order.tolist(), off_diagonal[order].tolist(), strict=True):  # n cells, not samples
        if count == 0:
            break
        true, predicted = divmod(cell, c)
        pairs.append({"true": classes[true], "predicted": classes[predicted], "true_index": true,
                      "predicted_index": predicted, "count": count, "share_of_true": count / int(support[true])})
    return pairs


def format_confused_pairs(pairs: Sequence[dict[str, Any]]) -> str:
    """One line per pair: `true -> predicted  count  share of the true class`."""
    if not pairs:
        return "(no mistakes)"
    rows = [[p["true"], "->", p["predicted"], p["count"], f"{100 * p['share_of_true']:.2f} %"] for p in pairs]
    return format_table(["true", "", "predicted", "count", "of the true class"], rows)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Left-aligned text columns (or a GitHub markdown table); cells are shown with str()."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan
