"""The benchmark script runs end to end: every contender trains, and the table and the JSON hold
its measured figures (no timing is compared: only that each figure is there and positive)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import REPO, real_data_dir, requires_mnist

sys.path.insert(0, str(REPO))


@requires_mnist
def test_overhead_script_quick_run(tmp_path: Path, capsys) -> None:
    from benchmarks import overhead

    out = tmp_path / "bench.json"
    code = overhead.main(["--model", "mlp", "--quick", "--repeats", "1", "--contenders", "harness", "raw",
                          "--threads", "1", "--data-root", str(real_data_dir()), "--json", str(out)])
    assert code in (0, None)
    table = capsys.readouterr().out
    # | model | contender | data path | median epoch [s] | min-max [s] | ratio to raw | paired ratio | val acc |
    rows = {cells[1]: cells for line in table.splitlines() if line.startswith("| mlp | ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert {"harness", "raw"} <= set(rows), table
    written = json.loads(out.read_text())
    assert {"machine", "command", "args", "models"} <= set(written)
    for name in ("harness", "raw"):
        _, _, data_path, median, spread, ratio, paired, acc = rows[name]
        low, high = (float(v) for v in spread.split("-"))
        assert data_path and 0 < low <= float(median) <= high, rows[name]
        assert float(ratio) > 0 and float(paired) > 0 and 0.1 < float(acc) <= 1.0, rows[name]
        [epoch] = written["models"]["mlp"][name]  # --repeats 1: one measured epoch
        assert epoch["wall"] > 0 and epoch["cpu"] > 0
        assert abs(float(acc) - epoch["val_acc"]) <= 5e-5  # the table rounds to 4 places
    assert rows["raw"][5] == rows["raw"][6] == "1.000"  # raw against itself
