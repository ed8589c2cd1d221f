"""`harness.export`: each format loads back and reproduces the model's outputs, carries its
preprocessing, fails its own check above the tolerance, never replaces a checkpoint; clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_fake_mnist

from harness.data import load_dataset
from harness.errors import HarnessError
from harness.export import main
from harness.recipe.build import build_model
from harness.recipe.schema import load_recipe
from harness.workflows.export import METADATA_FILE, example_batch, export

MLP_RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
CNN_RECIPE = REPO / "recipes" / "mnist.yaml"
# torch 2.14 marks torch.jit deprecated; loading the TorchScript file as a user would is still the check.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
TINY = ["trainer.epochs=1", "trainer.limit_train_batches=2", "data.val_size=20", "data.batch_size=32",
        "trainer.progress=false"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """best.pt of a two-step run of the MLP, of the CNN (with BatchNorm) and of a model whose outputs
    depend on the batch size, on fake MNIST."""
    from harness.workflows.training import train

    tmp = tmp_path_factory.mktemp("export")
    write_fake_mnist(tmp / "data", n_train=100, n_test=50)
    overrides = [*TINY, f"data.root={tmp / 'data'}"]
    found = {"overrides": overrides}
    odd = ["model.name=odd_models:BatchSizeDependent", "model.args={}"]
    for name, recipe, extra in (("mlp", MLP_RECIPE, []), ("cnn", CNN_RECIPE, []), ("odd", MLP_RECIPE, odd)):
        summary = train(load_recipe(recipe, [*overrides, *extra, f"logging.root={tmp / 'runs' / name}"]),
                        recipe_path=recipe)
        found[name] = Path(summary["run_dir"]) / "checkpoints" / "best.pt"
    found["odd_overrides"] = [*overrides, *odd]
    return found


def reference_outputs(recipe_path: Path, checkpoint: Path, overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model built anew from the recipe, the checkpoint file's raw weights loaded by hand: nothing
    shared with the export's own loading."""
    recipe = load_recipe(recipe_path, overrides)
    model = build_model(recipe.model)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    batch = example_batch(recipe, size=13)  # not the export batch (2) nor the check batch (37)
    with torch.no_grad():
        return batch, model.eval()(batch)


@pytest.mark.parametrize(("model", "fmt"), [("mlp", "onnx"), ("cnn", "onnx"), ("mlp", "torchscript"),
                                            ("cnn", "torchscript"), ("mlp", "state_dict")])
def test_export_reproduces_the_model(checkpoints: dict, tmp_path: Path, model: str, fmt: str) -> None:
    recipe_path = MLP_RECIPE if model == "mlp" else CNN_RECIPE
    recipe = load_recipe(recipe_path, checkpoints["overrides"])
    output = tmp_path / f"model.{fmt}"
    result = export(recipe, checkpoints[model], fmt, output, verbose=False)
    assert result["output"] == str(output) and output.stat().st_size == result["bytes"] > 10_000
    assert result["check_batch_size"] == 37
    assert result["max_abs_diff"] <= result["atol"] == 1e-4

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
    assert f"wrote {expected} (torchscript" in out and "max abs difference from the PyTorch model 0 " in out
    assert "allowed: --atol 0.0001" in out
    assert "mean [0.1307], std [0.3081]" in out and "input 'input' (batch, 1, 28, 28) float32" in out


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


def read_metadata(fmt: str, output: Path) -> dict:
    """The export's metadata, read back the way a user of the file would."""
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
        return {k: v if k in ("input_name", "input_dtype", "preprocessing", "output", "checkpoint", "weights")
                else json.loads(v) for k, v in props.items()}
    if fmt == "torchscript":
        files = {METADATA_FILE: ""}
        torch.jit.load(str(output), _extra_files=files)
        return json.loads(files[METADATA_FILE])
    return json.loads(output.with_name(output.name + ".json").read_text())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "state_dict"])
def test_export_carries_its_preprocessing(checkpoints: dict, tmp_path: Path, fmt: str) -> None:
    """The file says how to turn raw pixels into its input: applying what it says to the raw test
    images gives exactly the inputs the model was trained and checked on."""
    recipe = load_recipe(MLP_RECIPE, checkpoints["overrides"])
    output = tmp_path / f"model.{fmt}"
    export(recipe, checkpoints["mlp"], fmt, output, verbose=False)
    meta = read_metadata(fmt, output)
    assert meta["input_name"] == "input" and meta["input_shape"] == ["batch", 1, 28, 28]
    assert meta["input_dtype"] == "float32" and meta["mean"] == [0.1307] and meta["std"] == [0.3081]
    assert meta["preprocessing"].startswith("x = (pixel / 255 - mean) / std per channel")
    assert meta["classes"] == ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
                               "7 - seven", "8 - eight", "9 - nine"]
    assert meta["checkpoint"] == str(checkpoints["mlp"]) and meta["epoch"] == 1

    raw = load_dataset("mnist", recipe.data.root, train=False, download=False).images[:13].float()
    mean, std = torch.tensor(meta["mean"]).view(1, -1, 1, 1), torch.tensor(meta["std"]).view(1, -1, 1, 1)
    assert torch.allclose((raw / 255 - mean) / std, example_batch(recipe, size=13), atol=1e-5)


def test_data_classes_are_the_checkpoints(checkpoints: dict, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The class names written into the file are the recipe's: a recipe with other classes is refused."""
    code = main([str(MLP_RECIPE), "--checkpoint", str(checkpoints["mlp"]), "--format", "state_dict",
                 "--output", str(tmp_path / "m.pt"), *checkpoints["overrides"], "data.classes=[9,8,7,6,5,4,3,2,1,0]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "trained with data.classes=null" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python float")  # the point of this model
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_file_that_disagrees_with_the_model_fails_and_is_not_written(checkpoints: dict, tmp_path: Path, fmt: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Traced with a batch of 2, the batch-size-dependent model scales its logits by 2/10 in the file and
    by 37/10 in PyTorch: far above the tolerance, so exit 1, one line, and no file."""
    args = [str(MLP_RECIPE), "--checkpoint", str(checkpoints["odd"]), "--format", fmt,
            "--output", str(tmp_path / "odd.out"), *checkpoints["odd_overrides"]]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: export check failed: the {fmt} file's outputs differ from the PyTorch model's "
                          "by up to ")
    assert f"more than --atol 0.0001; nothing written to {tmp_path / 'odd.out'}" in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    # The same file passes when the caller states a tolerance it meets.
    recipe = load_recipe(MLP_RECIPE, checkpoints["odd_overrides"])
    diff = export(recipe, checkpoints["odd"], fmt, tmp_path / "odd.out", atol=1e6, verbose=False)["max_abs_diff"]
    assert diff > 1e-4 and (tmp_path / "odd.out").is_file()


def test_bad_atol_is_refused(checkpoints: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("-1", "nan", "inf"):
        code = main([str(MLP_RECIPE), "--checkpoint", str(checkpoints["mlp"]), "--format", "state_dict",
                     "--output", str(tmp_path / "m.pt"), "--atol", value, *checkpoints["overrides"]])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: --atol {float(value)}: must be a finite number >= 0"), err
    assert list(tmp_path.iterdir()) == []


def test_never_replaces_a_checkpoint_nor_a_folder(checkpoints: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    best = checkpoints["mlp"]
    last = best.with_name("last.pt")
    before = {path: path.read_bytes() for path in (best, last)}
    folder = tmp_path / "out"
    folder.mkdir()
    cases = [
        (best, "torchscript", f"error: --output {best}: is the checkpoint being exported"),
        (last, "onnx", f"error: --output {last}: is a harness checkpoint"),
        (folder, "state_dict", f"error: --output {folder}: is a folder"),
    ]
    # state_dict writes a sidecar too: <output>.json must not be a checkpoint either
    sidecar_target = tmp_path / "w.pt"
    (tmp_path / "w.pt.json").write_bytes(last.read_bytes())
    cases.append((sidecar_target, "state_dict", f"error: --output {tmp_path / 'w.pt.json'}: is a harness checkpoint"))
    for output, fmt, message in cases:
        code = main([str(MLP_RECIPE), "--checkpoint", str(best), "--format", fmt, "--output", str(output),
                     *checkpoints["overrides"]])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert {path: path.read_bytes() for path in (best, last)} == before
    assert list(folder.iterdir()) == [] and not sidecar_target.exists()
