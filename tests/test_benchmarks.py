"""The benchmark script runs end to end: every contender trains, and the table and the JSON hold
its measured figures (no timing is compared: only that each figure is there and positive)."""

from __future__ import annotations

import json
import re
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


def test_gpt_overhead_script_quick_run(capsys) -> None:
    from test_text_chars import shakespeare

    from benchmarks import gpt_overhead

    root = shakespeare().parent.parent
    assert gpt_overhead.main(["--steps", "3", "--rounds", "2", "--warmup", "0", "--threads", "1",
                              "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    # | contender | median round [s] | min-max [s] | tokens/s | median round, CPU [s] | val loss, last round
    # | whole validation split |
    rows = {cells[0]: cells for line in out.splitlines() if line.startswith("| harness") or line.startswith("| raw")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert set(rows) == {"harness", "raw"}
    for _, median, spread, tokens, cpu, loss, whole in rows.values():
        low, high = (float(v) for v in spread.split("-"))
        assert 0 < low <= float(median) <= high and float(tokens.replace(",", "")) > 0 and float(cpu) > 0
        assert 3.0 < float(loss) < 4.5 and 3.0 < float(whole) < 4.5  # 6 steps from ln(65) = 4.17
    # the same windows, weights and learning rates: the two loops did the same work
    assert abs(float(rows["harness"][5]) - float(rows["raw"][5])) < 1e-3
    assert abs(float(rows["harness"][6]) - float(rows["raw"][6])) < 1e-3
    assert "harness / raw, paired median over 2 rounds of 3 steps" in out


def test_loss_estimate_spread_script(tmp_path: Path, capsys) -> None:
    """A tiny GPT trained by the recipe: the script's whole-split loss is the run's test loss, and its
    estimates from random windows scatter around it."""
    from test_shakespeare_char import run_folder, text_file, train

    from benchmarks import loss_estimate_spread

    text_file(tmp_path)
    assert train(tmp_path) == 0
    run = run_folder(tmp_path)
    tested = json.loads((run / "summary.json").read_text())["test"]["loss"]
    capsys.readouterr()
    assert loss_estimate_spread.main([str(run / "config.yaml"), "--checkpoint", str(run / "checkpoints" / "best.pt"),
                                      "--batches", "4", "--repeats", "30", "--at", "10",
                                      "--data-root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    whole = float(out.split("whole validation split: loss ")[1].split()[0])
    assert abs(whole - tested) < 1e-4
    line = next(line for line in out.splitlines() if line.startswith("  mean "))
    pairs = re.findall(r"(mean|std|2\.5 %|median|97\.5 %|min|max) ([\d.]+)", line)
    stats = {name: float(value) for name, value in pairs}
    assert stats["std"] > 0 and stats["min"] <= stats["2.5 %"] <= stats["median"] <= stats["97.5 %"] <= stats["max"]
    assert abs(stats["mean"] - whole) < 0.2  # estimates of the same loss
    assert "at or below 10.0: 100.0%" in out  # every estimate of this 3.2-nat model


def test_activation_checkpointing_script_measures_both_variants(capsys) -> None:
    """A GPT small enough for a test, each variant in its own process: checkpointing keeps less for the backward
    and holds less at its peak (the figures are measured, not timed against anything)."""
    from benchmarks import activation_checkpointing

    assert activation_checkpointing.main(["--batch", "8", "--block-size", "64", "--n-layer", "3", "--n-embd", "64",
                                          "--n-head", "2", "--steps", "1", "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    # | variant | kept for backward [MB] | step peak [MB] | peak resident set growth [MB] | step [ms] |
    rows = {cells[0]: [float(c) for c in cells[1:]] for line in out.splitlines()
            if line.startswith(("| plain", "| checkpointed"))
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert set(rows) == {"plain", "checkpointed"}, out
    (plain_kept, plain_peak, _, plain_ms), (kept, peak, _, ms) = rows["plain"], rows["checkpointed"]
    assert 0 < kept < 0.5 * plain_kept and 0 < peak < plain_peak and plain_ms > 0 and ms > 0
    assert "GPT 3 blocks, 64 wide, 2 heads" in out and "checkpointed / plain: kept 0." in out
