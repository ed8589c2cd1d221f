"""`harness.export`: each format loads back and reproduces the model's outputs; clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_fake_mnist

from harness.errors import HarnessError
from harness.export import main
from harness.recipe.schema import load_recipe
from harness.recipe.weights import load_checkpoint_model
from harness.workflows.export import example_batch, export

MLP_RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
CNN_RECIPE = REPO / "recipes" / "mnist.yaml"
# torch 2.14 marks torch.jit deprecated; loading the TorchScript file as a user would is still the check.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
TINY = ["trainer.epochs=1", "trainer.limit_train_batches=2", "data.val_size=20", "data.batch_size=32",
        "trainer.progress=false"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """best.pt of a two-step run of the MLP and of the CNN (with BatchNorm) on fake MNIST."""
    from harness.workflows.training import train

    tmp = tmp_path_factory.mktemp("export")
    write_fake_mnist(tmp / "data", n_train=100, n_test=50)
    overrides = [*TINY, f"data.root={tmp / 'data'}"]
    found = {"overrides": overrides}
    for name, recipe in (("mlp", MLP_RECIPE), ("cnn", CNN_RECIPE)):
        summary = train(load_recipe(recipe, [*overrides, f"logging.root={tmp / 'runs'}"]), recipe_path=recipe)
        found[name] = Path(summary["run_dir"]) / "checkpoints" / "best.pt"
    return found


def reference_outputs(recipe_path: Path, checkpoint: Path, overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    recipe = load_recipe(recipe_path, overrides)
    model, _, _ = load_checkpoint_model(recipe, checkpoint)
    batch = example_batch(recipe, size=13)  # not the export batch (2) nor the check batch (37)
    with torch.no_grad():
        return batch, model(batch)


@pytest.mark.parametrize(("model", "fmt"), [("mlp", "onnx"), ("cnn", "onnx"), ("mlp", "torchscript"),
                                            ("cnn", "torchscript"), ("mlp", "state_dict")])
def test_export_reproduces_the_model(checkpoints: dict, tmp_path: Path, model: str, fmt: str) -> None:
    recipe_path = MLP_RECIPE if model == "mlp" else CNN_RECIPE
    recipe = load_recipe(recipe_path, checkpoints["overrides"])
    output = tmp_path / f"model.{fmt}"
    result = export(recipe, checkpoints[model], fmt, output, verbose=False)
    assert result["output"] == str(output) and output.stat().st_size == result["bytes"] > 10_000
    assert result["check_batch_size"] == 37
    assert result["max_abs_diff"] < 1e-4

    # Independently: load the file the way a user would and run another batch size.
    batch, expected = reference_outputs(recipe_path, checkpoints[model], checkpoints["overrides"])
    if fmt == "onnx":
        import onnx
        import onnxruntime

        graph = onnx.load(str(output)).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch dimension
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])
    elif fmt == "torchscript":
        got = torch.jit.load(str(output))(batch)
    else:
        from models import MLP

        fresh = MLP(in_features=784, hidden=(256, 128), num_classes=10, dropout=0.1)
        fresh.load_state_dict(torch.load(output, weights_only=True))
        got = fresh.eval()(batch)
    assert got.shape == expected.shape == (13, 10)
    assert (got - expected).abs().max() < 1e-4


def test_default_output_is_beside_the_run(checkpoints: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(MLP_RECIPE), "--checkpoint", str(checkpoints["mlp"]), "--format", "torchscript",
                 *checkpoints["overrides"]])
    out = capsys.readouterr().out
    expected = checkpoints["mlp"].parent.parent / "export" / "best.torchscript.pt"
    assert code == 0 and expected.is_file()
    assert f"wrote {expected} (torchscript" in out and "max abs difference from the PyTorch model 0" in out


def test_onnx_without_the_extra_says_how_to_install(checkpoints: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    code = main([str(MLP_RECIPE), "--checkpoint", str(checkpoints["mlp"]), "--format", "onnx",
                 "--output", str(tmp_path / "m.onnx"), *checkpoints["overrides"]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --format onnx needs the onnx and onnxruntime packages")
    assert err.rstrip().endswith("pip install -e '.[export]'")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_checkpoints_are_one_line_and_exit_2(checkpoints: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        (garbage, MLP_RECIPE, f"error: {garbage}: cannot be read as a checkpoint"),
        (tmp_path / "missing.pt", MLP_RECIPE, f"error: checkpoint not found: {tmp_path / 'missing.pt'}"),
        # the MLP's weights with the CNN's recipe
        (checkpoints["mlp"], CNN_RECIPE, f"error: {checkpoints['mlp']}: checkpoint does not fit this model"),
    ]
    for checkpoint, recipe, message in cases:
        code = main([str(recipe), "--checkpoint", str(checkpoint), "--format", "state_dict",
                     "--output", str(tmp_path / "out.pt"), *checkpoints["overrides"]])
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "out.pt").exists()


def test_unknown_format_is_refused() -> None:
    with pytest.raises(HarnessError, match="--format 'tflite': allowed are onnx, torchscript, state_dict"):
        export(load_recipe(MLP_RECIPE), "unused.pt", "tflite")
