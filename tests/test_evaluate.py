"""`harness.evaluate` against scikit-learn, the command end to end, and its errors.

One short run is trained once per module on a small MNIST-format dataset whose classes are
learnable (each image is its class's template plus noise) and whose test labels are unbalanced, so
that per-class figures differ and weighted averages differ from macro ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
import torch.nn.functional as F
from conftest import REPO, write_learnable_mnist
from hang_guard import HANG_GUARD_S

from harness.core.checkpoint import read_checkpoint
from harness.core.figures import confusion_matrix_figure
from harness.errors import HarnessError
from harness.evaluate import main
from harness.metrics.report import classification_summary, format_classification_report
from harness.recipe.build import build_model
from harness.recipe.run_folder import results_folder as output_dir
from harness.recipe.schema import load_recipe
from harness.workflows.evaluation import evaluate

RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
CNN_RECIPE = REPO / "recipes" / "mnist.yaml"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # recipes' normalisation (harness.data.datasets)


OVERRIDES = ["trainer.epochs=1", "data.val_size=100", "data.batch_size=50", "data.eval_batch_size=128",
             "trainer.progress=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One short training run of the MLP recipe: (data root, test arrays, run folder, overrides)."""
    from harness.workflows.training import train

    tmp = tmp_path_factory.mktemp("evaluate")
    arrays = write_learnable_mnist(tmp / "data")
    overrides = [*OVERRIDES, f"data.root={tmp / 'data'}"]
    train(load_recipe(RECIPE, [*overrides, f"logging.root={tmp / 'runs'}"]), recipe_path=RECIPE)
    (run_dir,) = (tmp / "runs" / "mnist_mlp").iterdir()
    return {"root": tmp / "data", "arrays": arrays, "run_dir": run_dir, "overrides": overrides}


def independent_logits(checkpoint: Path, images: np.ndarray) -> torch.Tensor:
    """The checkpoint's MLP on the raw uint8 images, normalised by hand: no harness data code."""
    model = build_model(load_recipe(RECIPE).model)
    model.load_state_dict(read_checkpoint(checkpoint)["model"])
    model.eval()
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - MNIST_MEAN) / MNIST_STD
    with torch.no_grad():
        return model(x).double()


def test_report_equals_sklearn_on_the_same_predictions(trained) -> None:
    checkpoint = trained["run_dir"] / "checkpoints" / "best.pt"
    result = evaluate(load_recipe(RECIPE, trained["overrides"]), checkpoint, write=False, verbose=False)

    y_true = trained["arrays"]["test_labels"]
    logits = independent_logits(checkpoint, trained["arrays"]["test_images"])
    y_pred = logits.argmax(1).numpy()
    labels = list(range(10))
    assert 0.3 < skm.accuracy_score(y_true, y_pred) < 1.0  # learnt something, still makes mistakes

    assert result["num_samples"] == len(y_true) == 300
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert result["top5_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y_true, logits.numpy(), k=5, labels=labels), abs=1e-12)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, torch.from_numpy(y_true)).item(), rel=1e-5)
    assert result["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()

    for average in ("micro", "macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                         zero_division=0)
        assert result["averages"][average] == pytest.approx({"precision": p, "recall": r, "f1": f}, abs=1e-12)
    assert result["averages"]["weighted"]["f1"] != pytest.approx(result["averages"]["macro"]["f1"])

    classes = result["classes"]
    assert classes[0] == "0 - zero" and list(result["per_class"]) == classes  # torchvision's class names
    sk = skm.classification_report(y_true, y_pred, labels=labels, target_names=classes, output_dict=True,
                                   zero_division=0)
    for name in classes:
        ours, theirs = result["per_class"][name], sk[name]
        assert ours["support"] == theirs["support"]
        assert [ours["precision"], ours["recall"], ours["f1"]] == pytest.approx(
            [theirs["precision"], theirs["recall"], theirs["f1-score"]], abs=1e-12)
    for average in ("macro", "weighted"):
        assert result["averages"][average]["f1"] == pytest.approx(sk[f"{average} avg"]["f1-score"], abs=1e-12)


def test_best_checkpoint_scores_what_the_run_tested(trained) -> None:
    summary = json.loads((trained["run_dir"] / "summary.json").read_text())
    result = evaluate(load_recipe(RECIPE, trained["overrides"]), trained["run_dir"] / "checkpoints" / "best.pt",
                      write=False, verbose=False)
    assert result["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-9)
    assert result["accuracy"] == pytest.approx(summary["test"]["acc"], abs=1e-12)
    assert result["averages"]["macro"]["f1"] == pytest.approx(summary["test"]["f1"], abs=1e-12)
    assert result["weights"] == "raw model weights"


def test_val_split_and_its_guard(trained) -> None:
    checkpoint = trained["run_dir"] / "checkpoints" / "last.pt"
    result = evaluate(load_recipe(RECIPE, trained["overrides"]), checkpoint, split="val", write=False, verbose=False)
    assert result["split"] == "val" and result["num_samples"] == 100
    assert result["accuracy"] == pytest.approx(summary_val_acc(trained["run_dir"]), abs=1e-12)
    # Another hold-out than the one trained with would score training images.
    other = load_recipe(RECIPE, [*trained["overrides"], "data.val_size=150"])
    with pytest.raises(HarnessError, match=r"data\.val_size=100 with trainer\.seed=0.*add data\.val_size=100"):
        evaluate(other, checkpoint, split="val", write=False, verbose=False)


def summary_val_acc(run_dir: Path) -> float:
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return history[0]["val/acc"]  # one epoch: last.pt holds the weights that epoch validated


def test_ema_weights_are_scored_when_the_recipe_has_ema(trained, tmp_path: Path) -> None:
    from harness.workflows.training import train

    recipe = load_recipe(RECIPE, [*trained["overrides"], "trainer.ema.decay=0.5", f"logging.root={tmp_path}"])
    summary = train(recipe, recipe_path=RECIPE)
    checkpoint = Path(summary["run_dir"]) / "checkpoints" / "best.pt"
    with_ema = evaluate(recipe, checkpoint, write=False, verbose=False)
    assert with_ema["weights"] == "EMA weights (decay 0.5)"
    assert with_ema["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-9)  # the run tested EMA too

    raw = evaluate(load_recipe(RECIPE, trained["overrides"]), checkpoint, write=False, verbose=False)
    assert raw["weights"].startswith("raw model weights; the checkpoint also holds EMA weights: add trainer.ema")
    assert raw["loss"] != pytest.approx(with_ema["loss"])

    plain = trained["run_dir"] / "checkpoints" / "best.pt"
    with pytest.raises(HarnessError, match=r"holds no EMA weights; add trainer\.ema=null"):
        evaluate(recipe, plain, write=False, verbose=False)


def run_evaluate(*args: str, data_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_root)}
    return subprocess.run([sys.executable, "-m", "harness.evaluate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_command_end_to_end(trained) -> None:
    run_dir = trained["run_dir"]
    result = run_evaluate(str(RECIPE), "--checkpoint", str(run_dir / "checkpoints" / "best.pt"), "--speed",
                          *OVERRIDES, data_root=trained["root"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "precision    recall  f1-score   support" in out and "weighted avg" in out and "p50 ms" in out

    report = json.loads((run_dir / "eval-best-test.json").read_text())
    assert report["split"] == "test" and report["num_samples"] == 300 and report["epoch"] == 1
    assert sum(map(sum, report["confusion_matrix"])) == 300
    assert set(report["per_class"]["3 - three"]) == {"precision", "recall", "f1", "support", "auroc",
                                                     "average_precision"}
    assert f"{report['accuracy']:.4f}" in out
    speed = report["speed"]
    assert [b["batch_size"] for b in speed["batches"]] == [1, 128]  # 1 and data.eval_batch_size
    assert speed["num_parameters"] == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10

    png = run_dir / "eval-best-test-confusion.png"
    assert report["files"]["confusion_png"] == str(png)
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width >= 400 and height >= 400

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "eval/test/confusion_matrix" in events.Tags()["images"]
    assert events.Images("eval/test/confusion_matrix")[0].step == 1  # the checkpoint's epoch
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars  # the run's own curves are still there, in the same folder
    assert events.Scalars("eval/test/f1_weighted")[0].value == pytest.approx(report["averages"]["weighted"]["f1"])
    # (the other outputs are read back in tests/test_evaluate_outputs.py)


def test_bad_input_is_one_line_and_exit_2(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = trained["run_dir"] / "checkpoints" / "best.pt"
    truncated = tmp_path / "checkpoints" / "truncated.pt"
    truncated.parent.mkdir()
    truncated.write_bytes(best.read_bytes()[: best.stat().st_size // 2])

    def error(*argv: str) -> str:
        assert main([*argv, *trained["overrides"]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        return err

    missing = tmp_path / "nope.pt"
    assert f"checkpoint not found: {missing}" in error(str(RECIPE), "--checkpoint", str(missing))
    assert f"{truncated}: cannot be read as a checkpoint" in error(str(RECIPE), "--checkpoint", str(truncated))
    err = error(str(CNN_RECIPE), "--checkpoint", str(best))  # an MLP checkpoint, the CNN recipe
    assert f"{best}: checkpoint does not fit this model: missing keys features.0.0.weight" in err
    assert "unexpected keys net.1.weight" in err
    assert "unknown key 'trainer.epoch'" in error(str(RECIPE), "--checkpoint", str(best), "trainer.epoch=1")
    assert not (tmp_path / "eval-truncated-test.json").exists()

    with pytest.raises(SystemExit) as exit_info:
        main([str(RECIPE), "--checkpoint", str(best), "--split", "train"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --split: invalid choice: 'train'" in err and "test" in err and "val" in err


def test_output_dir_is_the_run_folder(tmp_path: Path) -> None:
    assert output_dir(tmp_path / "run" / "checkpoints" / "best.pt") == (tmp_path / "run").resolve()
    assert output_dir(tmp_path / "elsewhere" / "model.pt") == (tmp_path / "elsewhere").resolve()


# ---------------------------------------------------------------------- harness.report
def test_classification_summary_equals_sklearn_with_absent_and_unpredicted_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 6, (500,), generator=gen)  # classes 6 and 7 never occur
    y_pred = torch.where(torch.rand(500, generator=gen) < 0.6, y_true, torch.randint(0, 8, (500,), generator=gen))
    y_pred[y_pred == 2] = 7  # class 2 is never predicted, class 7 is predicted but never true
    labels = list(range(8))
    names = [f"class {i}" for i in labels]
    summary = classification_summary(torch.from_numpy(skm.confusion_matrix(y_true, y_pred, labels=labels)), names)
    sk = skm.classification_report(y_true, y_pred, labels=labels, target_names=names, output_dict=True,
                                   zero_division=0)
    for name in names:
        assert [summary["per_class"][name][k] for k in ("precision", "recall", "f1", "support")] == pytest.approx(
            [sk[name][k] for k in ("precision", "recall", "f1-score", "support")], abs=1e-12)
    for average in ("micro", "macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                         zero_division=0)
        assert summary["averages"][average] == pytest.approx({"precision": p, "recall": r, "f1": f}, abs=1e-12)
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)

    text = format_classification_report(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    row = lines[2 + 7].split()  # class 7: never true, so everything 0 with support 0
    assert row == ["class", "7", "0.0000", "0.0000", "0.0000", "0"]
    macro = next(line for line in lines if line.strip().startswith("macro avg")).split()
    assert float(macro[4]) == pytest.approx(sk["macro avg"]["f1-score"], abs=5e-5) and macro[5] == "500"


def test_confusion_matrix_figure_is_row_normalised() -> None:
    fig = confusion_matrix_figure([[8, 2, 0], [0, 5, 5], [0, 0, 0]], ["a", "b", "c"], title="t")
    (ax, _colorbar) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["80.0", "20.0", "50.0", "50.0"]  # zeros left blank
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (10)", "b (10)", "c (0)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]



def test_a_checkpoint_is_not_scored_under_other_classes(trained, capsys: pytest.CaptureFixture[str]) -> None:
    # Trained on all 10 classes; a recipe keeping 5 of them would score class i of the model against
    # class i of the subset: a figure about nothing. Refused, and the right report stays as it was.
    best = trained["run_dir"] / "checkpoints" / "best.pt"
    assert main([str(RECIPE), "--checkpoint", str(best), *trained["overrides"]]) == 0
    report = trained["run_dir"] / "eval-best-test.json"
    before = report.read_bytes()
    capsys.readouterr()
    assert main([str(RECIPE), "--checkpoint", str(best), *trained["overrides"], "data.classes=[5,6,7,8,9]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.classes=null" in err and "data.classes=[5,6,7,8,9]" in err, err
    assert report.read_bytes() == before


def test_every_scalar_figure_comes_with_its_interval(trained) -> None:
    from harness.stats import wilson_interval

    result = evaluate(load_recipe(RECIPE, trained["overrides"]), trained["run_dir"] / "checkpoints" / "best.pt",
                      write=False, verbose=False)
    bounds = result["intervals"]
    n, correct = result["num_samples"], sum(result["confusion_matrix"][i][i] for i in range(10))
    assert bounds["confidence"] == 0.95
    assert bounds["accuracy"] == list(wilson_interval(correct, n))  # the Wilson interval of correct / n
    for average in ("macro", "weighted"):
        for name in ("precision", "recall", "f1"):
            low, high = bounds[f"{name}_{average}"]
            assert low < result["averages"][average][name] < high
            assert "bootstrap" in bounds["methods"][f"{name}_{average}"]
    again = evaluate(load_recipe(RECIPE, trained["overrides"]), trained["run_dir"] / "checkpoints" / "best.pt",
                     write=False, verbose=False)
    assert again["intervals"] == bounds  # seeded: the same interval every time
