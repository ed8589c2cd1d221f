"""The README's regression example runs as written and its figures agree with scikit-learn.

(`tests/test_readme.py` runs every README block too; this test checks what this one computes.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO
from sklearn.metrics import mean_squared_error, r2_score

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
REGRESSION = [block for block in BLOCKS if "R2Score(" in block]


def test_readme_has_one_regression_example() -> None:
    assert len(REGRESSION) == 1


def test_regression_example_fits_and_matches_sklearn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_regression_example"}
    exec(compile(REGRESSION[0], "README.md regression example", "exec"), namespace)
    results, model = namespace["results"], namespace["model"]
    x_val, y_val = namespace["x_val"], namespace["y_val"]

    with torch.no_grad():
        preds = model(x_val.to(next(model.parameters()).device)).squeeze(-1).cpu().double().numpy()
    target = y_val.double().numpy()
    assert results["r2"] > 0.9
    assert results["r2"] == pytest.approx(r2_score(target, preds), abs=1e-6)
    assert results["mse"] == pytest.approx(mean_squared_error(target, preds), rel=1e-5)
    assert results["loss"] == pytest.approx(results["mse"], rel=1e-5)  # MSELoss over equal batches: the same mean
    assert results["mse"] < 0.02  # the noise variance is 0.01: the linear fit is close to the best possible
    assert len(namespace["trainer"].history) == 10
