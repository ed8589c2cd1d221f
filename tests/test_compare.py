"""`python -m harness.compare` on the MLP and CNN recipes with tiny budgets on a fake MNIST: the table,
its files, and that its accuracy and macro-F1 are exactly `harness.evaluate`'s for each checkpoint."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import torch
import yaml
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
    assert all(float(r["train_seconds"]) > 0 and r["status"] == "done" for r in rows)
    # On the CPU one process cannot give each model its own peak: not a number that depends on the order.
    assert all(r["peak_mem_mb"] == "" for r in rows)

    accs = [float(r["test_acc"]) for r in rows[2:]]  # the CNN over seeds 0 and 1: mean ± sample std
    cell = f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f}"
    (cnn_line,) = [line for line in out.splitlines() if line.startswith("mnist ") and "±" in line]
    assert cell in cnn_line
    for heading in ("test acc", "macro-F1", "params", "FLOPs/sample", "train s", "infer samples/s", "p50 ms",
                    "peak mem MB"):
        assert heading in out
    markdown = (compare_dir / "compare.md").read_text()
    assert "| model | test acc | macro-F1 |" in markdown and cell in markdown and "ddof=1" in markdown
    assert "peak mem: not measured on cpu" in markdown and "same 60 test samples of 10 classes" in markdown

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
    (["--seeds", "0,0,1"], "seed 0 is given twice"),
    (["--checkpoint", "mnist=missing.pt"], "checkpoint not found: missing.pt"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, fake_mnist: Path, extra: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main

    assert main([MLP, CNN, *budget(tmp_path, fake_mnist), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def recipe_copy(tmp_path: Path, source: str, name: str, data: dict[str, object] | None = None,
                optim: dict[str, object] | None = None) -> str:
    """A copy of a shipped recipe under another name, with some data / optim keys changed."""
    recipe = yaml.safe_load(Path(source).read_text())
    recipe["data"].update(data or {})
    recipe["optim"].update(optim or {})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_models_on_different_test_splits_are_refused_before_training(
        tmp_path: Path, fake_mnist: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main

    # Digits 5-9 only: 30 of the 60 test images, 5 classes.
    scratch = str(REPO / "recipes/transfer_scratch_5to9.yaml")
    assert main([MLP, scratch, *budget(tmp_path, fake_mnist)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mnist_mlp and transfer_scratch_5to9 would be scored on different test splits" \
        in err and "60 images of 10 classes" in err and "30 images of 5 classes" in err, err
    assert not (tmp_path / "runs").exists()

    # The same size and classes, other images: a recipe reading another copy of MNIST (its own data.root).
    write_fake_mnist(tmp_path / "other", n_train=200, n_test=60, seed=1)
    other = recipe_copy(tmp_path, CNN, "other", data={"root": str(tmp_path / "other")})
    sets = budget(tmp_path, fake_mnist)
    args = [arg for i in range(0, len(sets), 2) if not sets[i + 1].startswith("data.root=") for arg in sets[i:i + 2]]
    monkeypatch.setenv("HARNESS_DATA_DIR", str(fake_mnist))  # the MLP's data.root
    assert main([MLP, other, *args]) == 2
    err = capsys.readouterr().err
    assert "60 images of 10 classes (0 - zero, 1 - one, 2 - two, ...) each, but other inputs or labels" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_row_is_checked_against_its_recipe_and_the_test_split(
        tmp_path: Path, fake_mnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main

    assert main([MLP, *budget(tmp_path, fake_mnist)]) == 0
    (first,) = (tmp_path / "runs" / "compare").iterdir()
    mlp_checkpoint = first / "mnist_mlp-seed0" / "checkpoints" / "best.pt"
    assert mlp_checkpoint.is_file()
    capsys.readouterr()
    # The MLP's weights given for the CNN: refused before anything trains.
    assert main([MLP, CNN, *budget(tmp_path, fake_mnist), "--checkpoint", f"mnist={mlp_checkpoint}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(mlp_checkpoint) in err, err
    # A checkpoint row on another test split (digits 5-9) is refused like a trained one.
    scratch = str(REPO / "recipes/transfer_scratch_5to9.yaml")
    assert main([MLP, scratch, *budget(tmp_path, fake_mnist), "--checkpoint",
                 f"transfer_scratch_5to9={mlp_checkpoint}"]) == 2
    assert len(list((tmp_path / "runs" / "compare").iterdir())) == 1  # no new comparison folder


def test_a_failed_model_keeps_the_others_figures_and_exits_1(tmp_path: Path, fake_mnist: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from harness.compare import main

    exploding = recipe_copy(tmp_path, CNN, "exploding", optim={"name": "sgd", "lr": 1e12})
    assert main([exploding, MLP, *budget(tmp_path, fake_mnist), "--set", "trainer.log_every_n_steps=1"]) == 1
    captured = capsys.readouterr()
    (compare_dir,) = (tmp_path / "runs" / "compare").iterdir()
    with (compare_dir / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["status"]) for r in rows] == [("exploding", "failed"), ("mnist_mlp", "done")]
    assert "NonFiniteLossError" in rows[0]["error"] and rows[0]["test_acc"] == ""
    assert 0 <= float(rows[1]["test_acc"]) <= 1 and float(rows[1]["params"]) > 0  # measured, not lost
    markdown = (compare_dir / "compare.md").read_text()
    assert "| exploding (1 of 1 failed) | - |" in markdown
    assert "failed: exploding seed 0: NonFiniteLossError" in markdown
    assert "1 of 2 runs failed" in captured.err and captured.err.count("error: ") == 1
