"""Loggers and checkpoint housekeeping: resume drops what a killed run logged past its checkpoint,
and temporary files of an interrupted checkpoint write are cleared."""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.core.callbacks import ModelCheckpoint
from harness.core.loggers import JsonlLogger


def test_jsonl_logger_appends_and_purges_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    first = JsonlLogger(path)
    for step in (1, 2, 3):
        first.log({"epoch": step, "train/loss": 1.0 / step}, step)
    first.close()
    # The checkpoint was written after epoch 2: epoch 3's line is from a run killed before it saved.
    resumed = JsonlLogger(path, purge_step=3)
    resumed.log({"epoch": 3, "train/loss": 0.3}, 3)
    resumed.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert lines[-1]["train/loss"] == 0.3


def test_model_checkpoint_clears_stale_temporary_files(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = folder / "last.pt"
    keep.write_bytes(b"complete")
    ModelCheckpoint(folder).on_fit_start(trainer=None)  # type: ignore[arg-type]
    assert not stale.exists()
    assert keep.read_bytes() == b"complete"


def test_jsonl_logger_writes_strict_json_with_null_for_non_finite_values(tmp_path: Path) -> None:
    logger = JsonlLogger(tmp_path / "history.jsonl")
    logger.log({"epoch": 1, "train/loss": 0.5, "val/loss": math.nan, "val/acc": math.inf, "lr": -math.inf}, 1)
    logger.close()

    def refuse(constant: str) -> None:  # Python's json.loads would accept NaN and Infinity
        raise ValueError(f"not JSON: {constant}")

    line = (tmp_path / "history.jsonl").read_text()
    assert json.loads(line, parse_constant=refuse) == {"step": 1, "epoch": 1, "train/loss": 0.5, "val/loss": None,
                                                       "val/acc": None, "lr": None}
