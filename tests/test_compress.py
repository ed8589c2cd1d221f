"""`harness.compress`: pruning really zeroes weights, int8 really quantizes, and the table holds together.

The model is the MLP recipe trained for one short epoch on MNIST-format data whose classes are
learnable (each image is its class's template plus noise), so accuracies mean something.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_idx
from torch import nn

from harness.compress import main
from harness.recipe.schema import load_recipe
from harness.recipe.weights import load_checkpoint_model
from harness.workflows.compression import (
    compress,
    file_sizes,
    format_table,
    prune_global,
    quantize_int8,
    weight_sparsity,
)
from harness.workflows.evaluation import evaluate
from models import MnistCNN

RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
FAST_TIMING = {"warmup": 1, "repeats": 3, "max_seconds": 0.1}


def write_learnable_mnist(root: Path, n_train: int = 600, n_test: int = 300, seed: int = 0) -> None:
    """IDX files where image = 0.4 * its class's random template + 0.6 * noise."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (10, 28, 28))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (0.4 * templates[labels] + 0.6 * rng.integers(0, 256, (n, 28, 28))).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from harness.workflows.training import train

    tmp = tmp_path_factory.mktemp("compress")
    write_learnable_mnist(tmp / "data")
    # trainer.device=cpu: evaluate() then scores on the CPU like compress(), so the rows compare exactly
    overrides = ["trainer.device=cpu", "trainer.epochs=1", "trainer.limit_train_batches=10", "data.val_size=100",
                 "data.batch_size=50", "trainer.progress=false", f"data.root={tmp / 'data'}",
                 f"logging.root={tmp / 'runs'}"]
    summary = train(load_recipe(RECIPE, overrides), recipe_path=RECIPE)
    checkpoint = Path(summary["run_dir"]) / "checkpoints" / "best.pt"
    recipe = load_recipe(RECIPE, overrides)
    report = compress(recipe, checkpoint, (0.5, 0.9), RECIPE, verbose=False, **FAST_TIMING)
    return {"recipe": recipe, "checkpoint": checkpoint, "report": report, "tmp": tmp}


def test_table_rows_and_files(trained: dict) -> None:
    report = trained["report"]
    assert [r["name"] for r in report["rows"]] == ["original", "pruned 50%", "pruned 90%", "int8 dynamic (Linear)"]
    assert report["num_test_samples"] == 300 and report["batch_sizes"] == [1, 1000]
    for row in report["rows"]:
        assert set(row["latency_ms_p50"]) == set(row["samples_per_s"]) == {"1", "1000"}
        assert row["latency_ms_p50"]["1"] > 0 and row["samples_per_s"]["1000"] > 0
    run_dir = Path(report["run_dir"])
    assert run_dir.parent == trained["tmp"] / "runs" / "mnist_mlp-compress"
    assert json.loads((run_dir / "compress.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    table = (run_dir / "compress.md").read_text().splitlines()
    assert table[2].startswith("| model | zeros in Linear/Conv weights | test acc | Δ acc (points) |")
    assert [line.split(" | ")[0] for line in table[4:]] == [f"| {r['name']}" for r in report["rows"]]
    assert (run_dir / "config.yaml").is_file()


def test_original_row_is_what_evaluate_reports(trained: dict) -> None:
    original = trained["report"]["rows"][0]
    scored = evaluate(trained["recipe"], trained["checkpoint"], write=False, verbose=False)
    assert original["accuracy"] == scored["accuracy"]
    assert original["f1_macro"] == scored["averages"]["macro"]["f1"]
    assert original["loss"] == pytest.approx(scored["loss"], rel=1e-9)
    assert 0.5 < original["accuracy"] < 1.0  # it learnt something: the comparisons below mean something


def test_at_bf16_the_report_also_holds_what_evaluate_reports(trained: dict) -> None:
    """The rows are float32 (int8 kernels need it, and every row is compared with the original); a bf16
    recipe's report also holds the original scored as evaluate scores it, at bf16, and the two agree."""
    assert trained["report"]["original_at_recipe_precision"] is None  # a float32 recipe: the original row is it
    recipe = trained["recipe"].model_copy(deep=True)
    recipe.trainer.precision = "bf16"
    report = compress(recipe, trained["checkpoint"], (0.5,), write=False, verbose=False, **FAST_TIMING)
    at_bf16 = report["original_at_recipe_precision"]
    scored = evaluate(recipe, trained["checkpoint"], write=False, verbose=False)
    assert (at_bf16["precision"], at_bf16["device"]) == ("bf16", "cpu")
    assert at_bf16["accuracy"] == scored["accuracy"]
    assert at_bf16["f1_macro"] == scored["averages"]["macro"]["f1"]
    assert at_bf16["loss"] == pytest.approx(scored["loss"], rel=1e-9)
    assert at_bf16["loss"] != report["rows"][0]["loss"]  # bf16 does round: the float32 row is another figure
    assert f"the original at the recipe's precision (bf16, on cpu, as harness.evaluate scores it): test acc " \
           f"{100 * scored['accuracy']:.2f} %" in format_table(report)


def test_pruning_reaches_the_sparsity_and_shrinks_the_compressed_file(trained: dict) -> None:
    rows = {r["name"]: r for r in trained["report"]["rows"]}
    original = rows["original"]
    assert original["weight_sparsity"] < 0.001
    for name, target in (("pruned 50%", 0.5), ("pruned 90%", 0.9)):
        assert rows[name]["weight_sparsity"] == pytest.approx(target, abs=1e-4)
        assert rows[name]["state_dict_bytes"] == pytest.approx(original["state_dict_bytes"], rel=0.01)  # dense
    assert rows["pruned 90%"]["deflate_bytes"] < 0.4 * original["deflate_bytes"]
    assert rows["pruned 90%"]["deflate_bytes"] < rows["pruned 50%"]["deflate_bytes"] < original["deflate_bytes"]

    # Directly on the model: zeros are plain weights (no masks left), biases untouched.
    model, _, _ = load_checkpoint_model(trained["recipe"], trained["checkpoint"])
    pruned = prune_global(model, 0.7)
    assert weight_sparsity(pruned) == pytest.approx(0.7, abs=1e-4)
    assert weight_sparsity(model) < 0.001  # the original is not modified
    after_state = pruned.state_dict()
    assert sorted(after_state) == sorted(model.state_dict())  # no weight_orig / weight_mask left
    for name, before in model.state_dict().items():
        after = after_state[name]
        if name.endswith("bias"):
            assert torch.equal(before, after)
        else:  # the kept weights are the largest ones, unchanged
            kept = after != 0
            assert torch.equal(after[kept], before[kept])
            assert before[~kept].abs().max() <= before[kept].abs().min()


def test_global_pruning_covers_conv_layers() -> None:
    torch.manual_seed(0)
    model = MnistCNN()
    pruned = prune_global(model, 0.8)
    assert weight_sparsity(pruned) == pytest.approx(0.8, abs=1e-4)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all((c.weight == 0).any() for c in convs)


def test_int8_has_quantized_linear_layers_and_keeps_accuracy(trained: dict) -> None:
    rows = {r["name"]: r for r in trained["report"]["rows"]}
    int8, original = rows["int8 dynamic (Linear)"], rows["original"]
    assert int8["int8_linear_layers"] == 3 and original["int8_linear_layers"] == 0
    assert int8["weight_sparsity"] is None
    assert abs(int8["accuracy"] - original["accuracy"]) < 0.03
    assert int8["state_dict_bytes"] < 0.3 * original["state_dict_bytes"]  # 1 byte per weight instead of 4

    model, _, _ = load_checkpoint_model(trained["recipe"], trained["checkpoint"])
    quantized = quantize_int8(model)
    kinds = [type(m) for m in quantized.modules()]
    assert kinds.count(torch.ao.nn.quantized.dynamic.Linear) == 3 and nn.Linear not in kinds
    assert file_sizes(quantized) == {k: int8[k] for k in ("state_dict_bytes", "deflate_bytes")}


def test_bad_input_is_one_line_and_exit_2(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_root = trained["tmp"] / "data"
    common = [str(RECIPE), f"data.root={data_root}", f"logging.root={tmp_path}"]
    garbage = tmp_path / "bad.pt"
    garbage.write_bytes(b"\x00" * 10)
    for args, message in (
        (["--checkpoint", str(trained["checkpoint"]), "--sparsities", "0.5,1.5"],
         "error: --sparsities 0.5,1.5: each must be between 0 and 1 (exclusive)"),
        (["--checkpoint", str(garbage)], f"error: {garbage}: cannot be read as a checkpoint"),
    ):
        assert main([*common, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [garbage]  # no run folder


@pytest.mark.parametrize(("classes", "num_classes"), [("[9,8,7,6,5,4,3,2,1,0]", 10), ("[0,1]", 2), ("[0,1]", 10)])
def test_other_classes_than_the_checkpoints_are_refused(trained: dict, tmp_path: Path, classes: str, num_classes: int,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Scored against reversed labels the model read 1.86 % on real MNIST; on a 2-class subset it crashed.
    The check evaluate makes (check_same_data, through build_evaluation) refuses both, before any scoring."""
    code = main([str(RECIPE), "--checkpoint", str(trained["checkpoint"]), f"data.root={trained['tmp'] / 'data'}",
                 f"logging.root={tmp_path}", f"data.classes={classes}", f"model.args.num_classes={num_classes}"])
    err = capsys.readouterr().err
    if num_classes == 2:  # the 2-class model does not fit the 10-class weights at all
        assert err.startswith(f"error: {trained['checkpoint']}: checkpoint does not fit this model"), err
    else:
        assert err.startswith(f"error: {trained['checkpoint']}: trained with data.classes=null, but the recipe says "
                              f"data.classes={classes}; score it with data.classes=null"), err
    assert code == 2 and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_a_model_without_linear_or_conv_layers_is_one_line(trained: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """With --sparsities "" the original row alone divided by zero weights (ZeroDivisionError)."""
    from harness.workflows.training import train

    overrides = ["model.name=odd_models:NoLinearOrConv", "model.args={}", "trainer.epochs=1",
                 "trainer.limit_train_batches=1", "data.val_size=100", "trainer.progress=false",
                 f"data.root={trained['tmp'] / 'data'}"]
    summary = train(load_recipe(RECIPE, [*overrides, f"logging.root={tmp_path / 'train'}"]), recipe_path=RECIPE)
    checkpoint = Path(summary["run_dir"]) / "checkpoints" / "best.pt"
    code = main([str(RECIPE), "--checkpoint", str(checkpoint), "--sparsities", "", *overrides,
                 f"logging.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: {checkpoint}: NoLinearOrConv has no Linear or Conv layer; compress prunes "
                                 "and quantizes those only, so there is nothing to compare\n")
    assert not (tmp_path / "runs").exists()
