"""`python -m harness.compare` on the MLP and CNN recipes with tiny budgets on a fake MNIST: the table,
its files, and that its accuracy and macro-F1 are exactly `harness.evaluate`'s for each checkpoint."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import scipy.stats
import torch
import yaml
from conftest import REPO, hparams_row, write_fake_mnist

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
        # The run's HParams row names its metrics by the tags of its own scalars, as train and sweep do.
        hparams, metrics, scalars = hparams_row(Path(row["run_dir"]))
        assert hparams == {"model": row["model"], "recipe": row["recipe"], "seed": float(row["seed"])}
        assert metrics == ["val/loss", "val/acc", "val/f1", *(["val/top5"] * (row["model"] == "mnist")),
                           "test/loss", "test/acc", "test/f1", *(["test/top5"] * (row["model"] == "mnist"))]
        assert set(metrics) <= scalars and not any(tag.startswith("hparam") for tag in scalars)
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
    # ... and the 95 % t-interval of the mean over the two seeds, with a note on what it is about
    low, high = scipy.stats.t.interval(0.95, 1, loc=statistics.fmean(accs), scale=scipy.stats.sem(accs))
    assert f"{cell}  [{low:.4f}, {high:.4f}]" in cnn_line
    assert "Seed variation is a different question from test-set sampling" in out
    # The pairwise test compares the first seed's models; the seeds give the per-seed differences.
    result = json.loads((compare_dir / "compare.json").read_text())
    (pair,) = result["pairs"]
    assert (pair["a"], pair["b"], pair["seed_a"], pair["seed_b"]) == ("mnist_mlp", "mnist", 0, 0)
    assert pair["acc_a"] == float(rows[0]["test_acc"]) and pair["acc_b"] == float(rows[2]["test_acc"])
    differences = [float(rows[0]["test_acc"]) - float(rows[2]["test_acc"]),
                   float(rows[1]["test_acc"]) - float(rows[3]["test_acc"])]
    assert pair["over_seeds"]["differences"] == pytest.approx(differences, abs=1e-12)
    assert "the pairwise test compares one model per recipe, that of the first seed both finished (seed 0)" in out
    for heading in ("test acc", "macro-F1", "params", "FLOPs/sample", "train s", "infer samples/s", "p50 ms",
                    "peak mem MB"):
        assert heading in out
    markdown = (compare_dir / "compare.md").read_text()
    assert "| model | test acc | test acc 95 % | macro-F1 |" in markdown and cell in markdown and "ddof=1" in markdown
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


def test_a_text_recipe_beside_a_classifier_is_refused_in_one_line_before_anything_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Classifiers are scored per test sample, language models per character over windows: no common table."""
    from harness.compare import main

    text = str(REPO / "recipes/shakespeare_char.yaml")
    assert main([text, MLP, "--set", f"logging.root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: mnist_mlp: data.name=mnist beside shakespeare_char's "
                                                  "text_chars: a comparison holds classifiers"), err
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
    assert "| exploding vs mnist_mlp | - |" in markdown and "not compared: exploding has no finished run" in markdown


def digits_mlp(tmp_path: Path, name: str, lr: float) -> str:
    """A small MLP on scikit-learn's bundled 8x8 digits (real data, no download), trained at `lr`."""
    recipe = {"model": {"name": "mlp", "args": {"in_features": 64, "hidden": [32], "num_classes": 10}},
              "data": {"name": "sklearn:digits", "batch_size": 64, "val_size": 137},
              "optim": {"name": "adamw", "lr": lr}, "trainer": {"epochs": 3, "progress": False},
              "logging": {"root": str(tmp_path / "runs")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def right_by_hand(checkpoint: str, recipe_path: str) -> torch.Tensor:
    """Which test samples a checkpoint gets right, from the model's argmax over the test split: no Trainer,
    no metric, none of compare's code."""
    from harness.recipe.data import build_data
    from harness.recipe.schema import load_recipe
    from harness.recipe.weights import load_checkpoint_model

    recipe = load_recipe(recipe_path)
    model, _, _ = load_checkpoint_model(recipe, checkpoint)
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) == y for x, y in build_data(recipe.data, torch.device("cpu"), 0).test])


def test_pairs_a_clearly_better_model_and_two_identical_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             one_thread: None) -> None:
    """Three models on the 360 real digits test images: one trained (~95 %), one barely moved from its
    initial weights (lr 1e-6), and a second copy of the trained one (the same recipe and seed: the same
    weights). The verdicts, p-values and intervals are checked against scipy, statsmodels and predictions
    counted by hand."""
    pytest.importorskip("sklearn")
    from statsmodels.stats.multitest import multipletests

    from harness.compare import main
    from harness.stats import paired_difference_ci

    good, bad = digits_mlp(tmp_path, "trained", 1e-2), digits_mlp(tmp_path, "untrained", 1e-6)
    assert main([good, bad, good]) == 0
    out = capsys.readouterr().out
    (compare_dir,) = (tmp_path / "runs" / "compare").iterdir()
    result = json.loads((compare_dir / "compare.json").read_text())
    runs = {r["model"]: r for r in result["runs"]}
    assert list(runs) == ["trained", "untrained", "trained-2"]
    assert runs["trained"]["test_acc"] > 0.9 and runs["untrained"]["test_acc"] < 0.5
    right = {label: right_by_hand(run["checkpoint"], run["recipe"]) for label, run in runs.items()}
    assert all(int(right[label].sum()) == round(runs[label]["test_acc"] * 360) for label in runs)
    assert torch.equal(right["trained"], right["trained-2"])  # the same weights: every sample alike

    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert list(pairs) == [("trained", "untrained"), ("trained", "trained-2"), ("untrained", "trained-2")]
    for (a, b), pair in pairs.items():
        only_a, only_b = int((right[a] & ~right[b]).sum()), int((right[b] & ~right[a]).sum())
        assert (pair["only_a_right"], pair["only_b_right"], pair["samples"]) == (only_a, only_b, 360)
        assert pair["difference"] == pytest.approx(runs[a]["test_acc"] - runs[b]["test_acc"], abs=1e-12)
        expected_p = scipy.stats.binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        assert pair["p_value"] == pytest.approx(expected_p, rel=1e-9, abs=0)  # abs=0: p-values near 1e-89 count
        assert pair["interval"] == pytest.approx(list(paired_difference_ci(right[a], right[b], seed=0)), abs=1e-12)
        assert pair["interval"][0] <= pair["difference"] <= pair["interval"][1]
    _, holm, _, _ = multipletests([p["p_value"] for p in pairs.values()], method="holm")
    assert [p["p_holm"] for p in pairs.values()] == pytest.approx(holm.tolist(), rel=1e-9, abs=0)

    clear = pairs[("trained", "untrained")]
    assert clear["p_holm"] < 1e-3 and clear["interval"][0] > 0.3
    assert clear["verdict"] == "trained better, p < 0.001"
    same = pairs[("trained", "trained-2")]
    assert same["difference"] == 0 and same["p_value"] == same["p_holm"] == 1.0 and same["interval"] == [0.0, 0.0]
    assert same["verdict"] == "no significant difference (p = 1)"
    assert pairs[("untrained", "trained-2")]["verdict"] == "trained-2 better, p < 0.001"

    (line,) = [line for line in out.splitlines() if line.startswith("trained vs untrained ")]
    assert "< 0.001" in line and line.endswith("trained better, p < 0.001")
    assert "Holm p" in out and "over the 3 pairs tested" in out
    markdown = (compare_dir / "compare.md").read_text()
    assert "| trained vs trained-2 | +0.0000 | [+0.0000, +0.0000] | 0 | 0 | 1 | 1 | no significant difference" \
        in markdown
    # The same tables in TensorBoard's TEXT tab of the comparison folder.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(compare_dir), size_guidance={"tensors": 0})
    events.Reload()
    (text,) = events.Tensors("compare/text_summary")
    assert text.tensor_proto.string_val[0].decode() == markdown.rstrip("\n")
