"""`python -m harness.compare` on the MLP and CNN recipes with tiny budgets on a fake MNIST: the table,
its files, and that its accuracy and macro-F1 are exactly `harness.evaluate`'s for each checkpoint."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_fake_mnist

from harness.workflows.comparison import count_flops

MLP, CNN = str(REPO / "recipes/mnist_mlp.yaml"), str(REPO / "recipes/mnist.yaml")


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    write_fake_mnist(tmp_path / "data", n_train=200, n_test=60)
    return tmp_path / "data"


def budget(tmp_path: Path, data: Path) -> list[str]:
    sets = ["trainer.epochs=1", "trainer.limit_train_batches=3", "data.val_size=50", "data.batch_size=32",
            "data.eval_batch_size=30", "trainer.progress=false", f"data.root={data}",
            f"logging.root={tmp_path / 'runs'}"]
    return [arg for item in sets for arg in ("--set", item)]


def test_compare_mlp_and_cnn_matches_evaluate(tmp_path: Path, fake_mnist: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.compare import main
    from harness.recipe.schema import load_recipe
    from harness.workflows.evaluation import evaluate

    assert main([MLP, CNN, *budget(tmp_path, fake_mnist), "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    (compare_dir,) = (tmp_path / "runs" / "compare").iterdir()
    with (compare_dir / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["seed"]) for r in rows] == [("mnist_mlp", "0"), ("mnist_mlp", "1"), ("mnist", "0"),
                                                      ("mnist", "1")]
    overrides = budget(tmp_path, fake_mnist)[1::2]
    for row in rows:
        recipe = load_recipe(row["recipe"], [*overrides, f"trainer.seed={row['seed']}"])
        scores = evaluate(recipe, row["checkpoint"], "test", write=False, verbose=False)
        assert float(row["test_acc"]) == scores["accuracy"]  # the very same figures, not approximately
        assert float(row["test_macro_f1"]) == scores["averages"]["macro"]["f1"]
        events = EventAccumulator(row["run_dir"])
        events.Reload()
        assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    mlp = rows[0]
    assert int(mlp["params"]) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert int(mlp["flops_per_sample"]) == 2 * (784 * 256 + 256 * 128 + 128 * 10)  # 2 FLOPs per multiply-add
    assert rows[1]["params"] == "" and rows[1]["latency_p50_ms"] == ""  # measured once per model
    assert float(mlp["latency_p50_ms"]) > 0 and float(mlp["infer_samples_per_s"]) > 0 and mlp["infer_batch"] == "30"
    assert all(float(r["train_seconds"]) > 0 and float(r["peak_mem_mb"]) > 0 for r in rows)

    accs = [float(r["test_acc"]) for r in rows[2:]]  # the CNN over seeds 0 and 1: mean ± sample std
    cell = f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f}"
    (cnn_line,) = [line for line in out.splitlines() if line.startswith("mnist ") and "±" in line]
    assert cell in cnn_line
    for heading in ("test acc", "macro-F1", "params", "FLOPs/sample", "train s", "infer samples/s", "p50 ms",
                    "peak mem MB"):
        assert heading in out
    markdown = (compare_dir / "compare.md").read_text()
    assert "| model | test acc | macro-F1 |" in markdown and cell in markdown and "ddof=1" in markdown

    # A given checkpoint is scored as it is: no training, the same figures.
    assert main([MLP, *budget(tmp_path, fake_mnist), "--checkpoint", f"mnist_mlp={mlp['checkpoint']}"]) == 0
    again = sorted((tmp_path / "runs" / "compare").iterdir())[-1]
    with (again / "compare.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["test_acc"] == mlp["test_acc"] and row["train_seconds"] == "" and row["seed"] == ""


def test_flops_of_a_conv_layer() -> None:
    conv = torch.nn.Conv2d(1, 4, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(1, 1, 8, 8)) == 2 * 8 * 8 * 4 * 9  # outputs x multiply-adds each


@pytest.mark.parametrize(("extra", "message"), [
    (["--checkpoint", "resnet=x.pt"], "no such model"),
    (["--checkpoint", "mnist_mlp"], "expected MODEL=PATH"),
    (["--seeds", "0,a"], "--seeds"),
    (["--set", "trainer.fast_dev_run=true"], "fast_dev_run"),
    (["--set", "optim.lrr=1"], "unknown key 'optim.lrr'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, fake_mnist: Path, extra: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main

    assert main([MLP, CNN, *budget(tmp_path, fake_mnist), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()
