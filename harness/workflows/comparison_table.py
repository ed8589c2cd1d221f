"""The models' table of `harness.compare`, for classifiers and language models alike: one row per model,
mean ± sample std over seeds, and the 95 % interval of the headline figure beside it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from harness.metrics.report import format_table


def models_table(models: Sequence[Mapping[str, Any]], columns: Mapping[str, str], digits: Mapping[str, int], *,
                 counts: Sequence[str], interval: tuple[str, str, str], markdown: bool = False) -> str:
    """`columns`: field -> heading; each model holds `(mean, std)` per field (None: not measured, "-"; std NaN:
    one seed, no ±). `counts` are printed as whole numbers, the rest with `digits[field]` places.
    `interval` = (the field it follows, the model's key holding {"low", "high"} or None, its heading)."""
    after, key, heading = interval
    rows = []
    for model in models:
        failed, total = len(model["failed"]), len(model["seeds"]) + len(model["failed"])
        cells = [model["label"] + (f" ({failed} of {total} failed)" if failed else "")]
        for field in columns:
            mean, std = model[field]
            if mean is None:
                cells.append("-")
            elif field in counts:
                cells.append(f"{mean:,.0f}")
            else:
                d = digits[field]
                cells.append(f"{mean:,.{d}f}" + (f" ± {std:,.{d}f}" if not math.isnan(std) else ""))
            if field == after:
                bounds = model[key]
                cells.append("-" if bounds is None else f"[{bounds['low']:.4f}, {bounds['high']:.4f}]")
        rows.append(cells)
    headings = [*columns.values()]
    headings.insert(list(columns).index(after) + 1, heading)
    return format_table(["model", *headings], rows, markdown=markdown)
