"""The README's Python examples run as written, so they never drift from the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import REPO, real_data_dir

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = BLOCKS[index]
    if "load_dataset(" in code:
        if real_data_dir() is None:
            pytest.skip("needs the real MNIST (../shared/data)")
        monkeypatch.setenv("HARNESS_DATA_DIR", str(real_data_dir()))
    monkeypatch.chdir(tmp_path)  # examples that write runs/ write them here
    namespace: dict = {"__name__": f"readme_example_{index}"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    if "scores" in namespace:  # the full Python example: 3 epochs of the MLP on real MNIST
        assert namespace["scores"]["acc"] > 0.96
        assert len(namespace["history"]) == 3
        assert (tmp_path / "runs" / "my-exp" / "history.jsonl").is_file()
    assert os.getcwd() == str(tmp_path)
