"""The benchmark script runs end to end (a smoke test: no timing is asserted, only that every
contender trains and the table and JSON come out)."""

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
    assert "| mlp | harness |" in table and "| mlp | raw |" in table
    assert out.is_file() and json.loads(out.read_text())
