"""Recipes: every shipped YAML loads, overrides are validated like the file, bad input is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hang_guard import HANG_GUARD_S

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
    vocab_size = 100 if recipe.data.name == "text_lines" else None  # sentences: the data's vocabulary sizes it
    assert sum(p.numel() for p in build_model(recipe.model, vocab_size=vocab_size).parameters()) > 0
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


def test_a_mapping_override_merges_into_the_section(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("optim: {name: sgd, lr: 0.1, weight_decay: 0.01, momentum: 0.5}\n"
                    "trainer: {early_stopping: {monitor: val/loss, mode: min, patience: 2}}\n"
                    "model: {name: mlp, args: {hidden: [8], dropout: 0.1}}\n"
                    "metrics: {acc: {type: accuracy, top_k: 2}, f1: {type: f1}}\n")
    recipe = load_recipe(path, ["optim={lr: 0.01}", "trainer={early_stopping: {patience: 5}, epochs: 2}",
                                "metrics.acc={top_k: 3}"])
    assert recipe.optim.lr == pytest.approx(0.01)
    assert (recipe.optim.name, recipe.optim.weight_decay, recipe.optim.momentum) == ("sgd", 0.01, 0.5)
    stopping = recipe.trainer.early_stopping
    assert stopping is not None and (stopping.monitor, stopping.mode, stopping.patience) == ("val/loss", "min", 5)
    assert recipe.trainer.epochs == 2
    assert (recipe.metrics["acc"].type, recipe.metrics["acc"].top_k) == ("accuracy", 3)
    # A mapping whose keys are the user's own (a model's arguments, the named metrics) is a value: it
    # replaces, inside a merged section too; it is the one way to drop a key the file sets.
    replaced = load_recipe(path, ["model={args: {hidden: [4]}}", "metrics={f1: {type: f1}}"])
    assert replaced.model.name == "mlp" and replaced.model.args == {"hidden": [4]}
    assert list(replaced.metrics) == ["f1"]
    # A value that is not a mapping replaces what is there.
    assert load_recipe(path, ["trainer.early_stopping=null"]).trainer.early_stopping is None
    assert load_recipe(path, ["optim.param_groups=[{prefix: head, lr: 0.5}]"]).optim.param_groups[0].lr == 0.5


def test_defaults_live_in_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    recipe = load_recipe(path)
    assert recipe.data.val_size == 5000
    assert recipe.trainer.device == "auto"
    assert list(recipe.metrics) == ["acc"]


def test_score_metrics_build_from_a_recipe_and_log_a_scalar(tmp_path: Path) -> None:
    from harness import metrics
    from harness.recipe.build import build_metrics, logged_names

    path = tmp_path / "r.yaml"
    path.write_text("data: {val_size: 100}\n"
                    "metrics: {auroc: {type: auroc}, ece: {type: calibration_error}, ap: {type: average_precision},\n"
                    "          brier: {type: brier}, mce: {type: calibration_error, norm: max, n_bins: 10},\n"
                    "          auroc_fast: {type: auroc, thresholds: 200, average: weighted},\n"
                    "          ap_per_class: {type: average_precision, average: none}}\n")
    recipe = load_recipe(path)
    built = build_metrics(recipe.metrics, num_classes=3)
    assert isinstance(built["auroc"], metrics.AUROC) and built["auroc"].thresholds is None
    assert (built["auroc_fast"].thresholds, built["auroc_fast"].average) == (200, "weighted")
    assert isinstance(built["ap"], metrics.AveragePrecision)
    assert (type(built["ece"]), built["ece"].n_bins, built["ece"].norm) == (metrics.CalibrationError, 15, "l1")
    assert (built["mce"].n_bins, built["mce"].norm) == (10, "max")
    assert isinstance(built["brier"], metrics.BrierScore)
    names = logged_names(recipe)
    assert {"val/auroc", "val/ece", "val/ap", "val/brier", "val/mce", "val/auroc_fast"} <= set(names)
    assert "val/ap_per_class" not in names  # per class: not one scalar
    path.write_text("metrics: {auroc: {type: auroc, average: micro}}\n")
    with pytest.raises(HarnessError, match=r"metrics\.auroc: average must be one of \('macro', 'weighted', 'none'\)"):
        build_metrics(load_recipe(path).metrics, num_classes=3)


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("optim: {lrr: 0.1}\n", [], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("optim: {lr: fast}\n", [], "optim.lr: Input should be a valid number"),
        ("scheduler: {interval: sometimes}\n", [], "scheduler.interval: Input should be 'step' or 'epoch'"),
        ("trainer: {threads: 0}\n", [], "trainer.threads: Input should be greater than 0"),
        ("trainer: {epochs: 2.5}\n", [], "trainer.epochs"),
        ("trainer: {precision: 8}\n", [], "trainer.precision"),
        ("optim: {args: [rho]}\n", [], "optim.args: Input should be a valid dictionary"),
        ("trainer: {early_stopping: {patiance: 2}}\n", [], "did you mean 'trainer.early_stopping.patience'"),
        ("metrics: {acc: {type: accuracy, topk: 5}}\n", [], "did you mean 'metrics.acc.top_k'"),
        ("metrics: {auroc: {type: auroc, thresholds: 1}}\n", [], "metrics.auroc.thresholds"),
        ("metrics: {ece: {type: calibration_error, norm: l3}}\n", [], "metrics.ece.norm"),
        ("", ["optim.lrr=1"], "unknown key 'optim.lrr'"),
        ("", ["optim.lr=fast"], "optim.lr"),
        ("", ["optim.lr"], "expected key=value"),
        ("optim:\n  lr: [1\n", [], "r.yaml:3: YAML syntax error"),
        ("- a\n- b\n", [], "a recipe must be a mapping"),
        ("logging: {name: ../elsewhere}\n", [], "logging.name: Value error, must be one folder name under"),
        ("", ["logging.name=/tmp/elsewhere"], "logging.name: Value error, must be one folder name"),
        ("", ["logging.name=a/b"], "(got 'a/b')"),
        ("", ["logging.name=a\\b"], "(got 'a\\\\b')"),
        ("", ["logging.name=.."], "(got '..')"),
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
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["missing.yaml"], "error: recipe not found: missing.yaml"),
        (["recipes/mnist.yaml", "optim.lrr=1"], "did you mean 'optim.lr'?"),
        (["recipes/mnist.yaml", "optim.lr=fast"], "optim.lr: Input should be a valid number"),
        (["recipes/mnist.yaml", "optim.name=rmsprob"], "optim.name 'rmsprob': unknown; choose a class of torch.optim"),
        (["recipes/mnist.yaml", "model.name=resnet9000"], "unknown model; choose one of mlp, cnn"),
        (["recipes/mnist.yaml", "data.name=imagenet"], "unknown dataset 'imagenet': choose one of"),
        (["recipes/mnist.yaml", "trainer.device=cuda:7"], "device 'cuda:7'"),
        (["recipes/mnist.yaml", "trainer.monitor=val/nope"], "'val/nope' is never logged"),
        (["recipes/mnist.yaml", "logging.name=../outside"], "logging.name: Value error, must be one folder name"),
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


BROKEN_MODULES = {
    "raises_on_import.py": "raise RuntimeError('no GPU driver found')\n",
    "bad_syntax.py": "def net(:\n    pass\n",
    "needs_a_dependency.py": "import a_dependency_nobody_installed\n",
}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.name=raises_on_import:Net",
         "error: model.name 'raises_on_import:Net': cannot import it: importing 'raises_on_import' failed: "
         "RuntimeError: no GPU driver found"),
        ("model.name=bad_syntax:Net",
         "error: model.name 'bad_syntax:Net': cannot import it: importing 'bad_syntax' failed: "
         "SyntaxError: invalid syntax (bad_syntax.py, line 1)"),
        ("model.name=needs_a_dependency:Net",
         "error: model.name 'needs_a_dependency:Net': cannot import it: importing 'needs_a_dependency' failed: "
         "ModuleNotFoundError: No module named 'a_dependency_nobody_installed'"),
        ("model.name=nowhere.models:Net",
         "error: model.name 'nowhere.models:Net': cannot import it: no module named 'nowhere.models'; "
         "it must be on PYTHONPATH (or importable from the working directory)"),
        ("data.name=import:raises_on_import:load",
         "error: data.name 'import:raises_on_import:load': cannot import it: importing 'raises_on_import' failed: "
         "RuntimeError: no GPU driver found"),
    ],
)
def test_cli_an_import_path_that_fails_to_import_is_one_line(override: str, expected: str, tmp_path: Path) -> None:
    import os

    for name, code in BROKEN_MODULES.items():
        (tmp_path / name).write_text(code)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HARNESS_DATA_DIR": str(tmp_path / "no-data")}
    result = _cli("recipes/mnist.yaml", override, "data.download=false", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [expected]


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
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert "python -m harness.train" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH")
