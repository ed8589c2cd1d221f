"""Recipes: every shipped YAML loads, overrides are validated like the file, bad input is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.recipe.schema import Recipe, load_recipe, parse_override

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_builds(path: Path) -> None:
    from harness.recipe.build import build_model, check_monitors

    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    check_monitors(recipe)
    assert sum(p.numel() for p in build_model(recipe.model).parameters()) > 0
    assert path.read_text().startswith("#"), "a recipe opens with a header saying what it trains"


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("optim: {name: sgd, lr: 0.1}\n")
    recipe = load_recipe(path, ["optim.lr=3e-3", "trainer.epochs=5", "model.args.hidden=[64]", "data.root=/x"])
    assert recipe.optim.lr == pytest.approx(3e-3)
    assert recipe.optim.name == "sgd"
    assert recipe.trainer.epochs == 5
    assert recipe.model.args == {"hidden": [64]}
    assert recipe.data.root == "/x"
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)


def test_defaults_live_in_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    recipe = load_recipe(path)
    assert recipe.data.val_size == 5000
    assert recipe.trainer.device == "auto"
    assert list(recipe.metrics) == ["acc"]


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("optim: {lrr: 0.1}\n", [], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("optim: {lr: fast}\n", [], "optim.lr: Input should be a valid number"),
        ("optim: {name: rmsprop}\n", [], "optim.name: Input should be 'sgd', 'adam' or 'adamw'"),
        ("trainer: {epochs: 2.5}\n", [], "trainer.epochs"),
        ("trainer: {precision: 8}\n", [], "trainer.precision"),
        ("scheduler: {name: cosinus}\n", [], "scheduler.name"),
        ("trainer: {early_stopping: {patiance: 2}}\n", [], "did you mean 'trainer.early_stopping.patience'"),
        ("metrics: {acc: {type: accuracy, topk: 5}}\n", [], "did you mean 'metrics.acc.top_k'"),
        ("", ["optim.lrr=1"], "unknown key 'optim.lrr'"),
        ("", ["optim.lr=fast"], "optim.lr"),
        ("", ["optim.lr"], "expected key=value"),
        ("optim:\n  lr: [1\n", [], "r.yaml:3: YAML syntax error"),
        ("- a\n- b\n", [], "a recipe must be a mapping"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(tmp_path: Path, text: str, overrides: list[str], expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_recipe() -> None:
    with pytest.raises(HarnessError, match=r"recipe not found: nope\.yaml"):
        load_recipe("nope.yaml")


def _cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["missing.yaml"], "error: recipe not found: missing.yaml"),
        (["recipes/mnist.yaml", "optim.lrr=1"], "did you mean 'optim.lr'?"),
        (["recipes/mnist.yaml", "optim.lr=fast"], "optim.lr: Input should be a valid number"),
        (["recipes/mnist.yaml", "optim.name=rmsprop"], "'sgd', 'adam' or 'adamw'"),
        (["recipes/mnist.yaml", "model.name=resnet9000"], "unknown model; choose one of mlp, cnn"),
        (["recipes/mnist.yaml", "data.name=imagenet"], "unknown dataset 'imagenet': choose one of"),
        (["recipes/mnist.yaml", "trainer.device=cuda:7"], "device 'cuda:7'"),
        (["recipes/mnist.yaml", "trainer.monitor=val/nope"], "'val/nope' is never logged"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args: list[str], expected: str, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "HARNESS_DATA_DIR": str(tmp_path / "no-data")}
    result = _cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_data_offline_names_the_files(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "HARNESS_DATA_DIR": str(tmp_path / "empty")}
    result = _cli("recipes/mnist.yaml", "data.download=false", env=env)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert str(tmp_path / "empty" / "MNIST" / "raw") in line
    assert "train-images-idx3-ubyte" in line and "t10k-labels-idx1-ubyte" in line


def test_help_does_not_import_torch() -> None:
    code = "import sys, runpy; sys.argv=['harness.train','--help']\n" \
           "try:\n    runpy.run_module('harness.train', run_name='__main__')\nexcept SystemExit: pass\n" \
           "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "python -m harness.train" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH")
