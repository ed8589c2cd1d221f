"""Everything `harness.evaluate` writes, read back and checked against independent oracles.

One short MLP run on learnable MNIST-format images (tests/conftest.py: write_learnable_mnist) is scored
once per module with files written; the checks read the predictions CSV with the csv module, the
TensorBoard events with TensorBoard's own EventAccumulator, and compare with the checkpoint's model run
by hand (no harness data or metric code) through scikit-learn and torchmetrics. The two bundled
scikit-learn recipes run end to end: one of images, one of feature vectors.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from conftest import REPO, write_learnable_mnist

from harness.core.checkpoint import read_checkpoint
from harness.evaluate import main
from harness.recipe.build import build_model
from harness.recipe.schema import load_recipe
from harness.workflows.evaluation import evaluate
from harness.workflows.evaluation_files import evaluation_figures, tag
from harness.workflows.evaluation_report import format_evaluation

RECIPE = REPO / "recipes" / "mnist_mlp.yaml"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # recipes' normalisation (harness.data.datasets)
OVERRIDES = ["trainer.epochs=1", "data.val_size=100", "data.batch_size=50", "data.eval_batch_size=128",
             "trainer.progress=false"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory):
    """Train 1 epoch, evaluate best.pt with files written; the report, the run folder and the oracle's
    view: the test labels and the checkpoint's probabilities computed here by hand."""
    from harness.workflows.training import train

    tmp = tmp_path_factory.mktemp("evaluate-outputs")
    arrays = write_learnable_mnist(tmp / "data")
    overrides = [*OVERRIDES, f"data.root={tmp / 'data'}"]
    train(load_recipe(RECIPE, [*overrides, f"logging.root={tmp / 'runs'}"]), recipe_path=RECIPE)
    (run_dir,) = (tmp / "runs" / "mnist_mlp").iterdir()
    best = run_dir / "checkpoints" / "best.pt"
    report = evaluate(load_recipe(RECIPE, overrides), best, verbose=False)

    model = build_model(load_recipe(RECIPE).model)
    model.load_state_dict(read_checkpoint(best)["model"])
    model.eval()
    x = (torch.from_numpy(arrays["test_images"]).float().unsqueeze(1) / 255 - MNIST_MEAN) / MNIST_STD
    with torch.no_grad():
        probs = model(x).double().softmax(dim=1).numpy()
    return {"report": report, "run_dir": run_dir, "y": arrays["test_labels"], "probs": probs,
            "overrides": overrides, "best": best}


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def test_predictions_csv_is_the_split_in_order(scored) -> None:
    report, y, probs = scored["report"], scored["y"], scored["probs"]
    path = scored["run_dir"] / "predictions-best-test.csv"
    assert report["files"]["predictions_csv"] == str(path)
    header, rows = read_csv(path)
    assert header == ["index", "target", "target_name", "prediction", "prediction_name", "probability",
                      *(f"top{j}{s}" for j in range(1, 6) for s in ("", "_probability"))]
    assert len(rows) == report["num_samples"] == len(y) == 300
    column = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    assert [int(v) for v in column["index"]] == list(range(300))
    target, prediction = np.array(column["target"], dtype=int), np.array(column["prediction"], dtype=int)
    assert (target == y).all()  # row i is sample i of the test split
    assert (prediction == probs.argmax(1)).all()
    assert np.array(column["probability"], dtype=float) == pytest.approx(probs.max(1), abs=1e-6)
    classes = report["classes"]
    assert column["target_name"] == [classes[t] for t in target]
    assert column["prediction_name"] == [classes[p] for p in prediction]
    # The predictions are the ones the confusion matrix counted.
    assert skm.confusion_matrix(target, prediction, labels=range(10)).tolist() == report["confusion_matrix"]

    top = np.array([[row[header.index(f"top{j}")] for j in range(1, 6)] for row in rows], dtype=int)
    top_p = np.array([[row[header.index(f"top{j}_probability")] for j in range(1, 6)] for row in rows], dtype=float)
    assert (top[:, 0] == prediction).all() and (top_p[:, 0] == np.array(column["probability"], dtype=float)).all()
    assert (np.diff(top_p, axis=1) <= 0).all() and (top_p >= 0).all() and (top_p.sum(1) <= 1 + 1e-9).all()
    expected = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    assert top_p == pytest.approx(np.take_along_axis(probs, expected, 1), abs=1e-6)
    assert all(len(set(r)) == 5 for r in top.tolist())  # five distinct classes a row


def test_confused_pairs_are_the_largest_off_diagonal_cells(scored) -> None:
    report = scored["report"]
    cm = skm.confusion_matrix(scored["y"], scored["probs"].argmax(1), labels=range(10))
    off = [(int(cm[i, j]), i, j) for i in range(10) for j in range(10) if i != j and cm[i, j] > 0]
    expected = sorted(off, key=lambda cell: (-cell[0], cell[1], cell[2]))[:10]
    pairs = report["confused_pairs"]
    assert [(p["count"], p["true_index"], p["predicted_index"]) for p in pairs] == expected
    for p in pairs:
        assert p["share_of_true"] == pytest.approx(p["count"] / cm[p["true_index"]].sum())
        assert (p["true"], p["predicted"]) == (report["classes"][p["true_index"]],
                                               report["classes"][p["predicted_index"]])
    printed = format_evaluation(report)
    first = pairs[0]
    line = next(line for line in printed.splitlines() if line.startswith(first["true"] + " ") and "->" in line)
    assert line.split()[-2:] == [f"{100 * first['share_of_true']:.2f}", "%"] and str(first["count"]) in line


def test_calibration_and_the_reliability_diagram(scored) -> None:
    from torchmetrics.classification import MulticlassCalibrationError

    report, y, probs = scored["report"], scored["y"], scored["probs"]
    oracle = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(torch.from_numpy(probs),
                                                                                torch.from_numpy(y)).item()
    bins = report["calibration"]
    assert report["ece"] == bins["ece"] == pytest.approx(oracle, abs=1e-6)
    confidence = probs.max(1)
    counts, _ = np.histogram(confidence, bins=np.linspace(0, 1, 16))
    assert bins["count"] == counts.tolist() and sum(bins["count"]) == 300
    hits = probs.argmax(1) == y
    in_bin = np.digitize(confidence, np.linspace(0, 1, 16)[1:-1])
    assert bins["correct"] == [int(hits[in_bin == b].sum()) for b in range(15)]

    png = Path(report["files"]["reliability_png"])
    assert png.name == "eval-best-test-reliability.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The figure is drawn from the report's data: its ECE is the metric's, and torchmetrics'.
    figure = evaluation_figures(report, "best.pt")["reliability"]
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    (ece_text,) = [t for t in texts if t.startswith("ECE ")]
    assert ece_text.splitlines()[0] == f"ECE {oracle:.4f}" == f"ECE {report['ece']:.4f}"


def test_auroc_and_average_precision_per_class_equal_sklearn(scored) -> None:
    report, y, probs = scored["report"], scored["y"], scored["probs"]
    for c, name in enumerate(report["classes"]):
        entry = report["per_class"][name]
        assert entry["auroc"] == pytest.approx(skm.roc_auc_score(y == c, probs[:, c]), abs=1e-12)
        assert entry["average_precision"] == pytest.approx(skm.average_precision_score(y == c, probs[:, c]),
                                                           abs=1e-12)
    assert report["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"),
                                            abs=1e-12)
    assert report["average_precision"] == pytest.approx(
        skm.average_precision_score(np.eye(10)[y], probs, average="macro"), abs=1e-12)


def test_most_confident_mistakes_are_kept(scored) -> None:
    y, probs = scored["y"], scored["probs"]
    wrong = np.flatnonzero(probs.argmax(1) != y)
    assert len(wrong) > 16  # enough to choose from
    expected = wrong[np.argsort(-probs.max(1)[wrong], kind="stable")][:16]
    shown = scored["report"]["mistakes"]["shown"]
    assert [m["index"] for m in shown] == expected.tolist()
    assert [m["probability"] for m in shown] == pytest.approx(probs.max(1)[expected].tolist(), abs=1e-6)
    assert [m["target"] for m in shown] == y[expected].tolist()
    assert [m["predicted"] for m in shown] == probs.argmax(1)[expected].tolist()


def test_tensorboard_holds_figures_and_pr_curves_not_per_class_scalars(scored) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    report = scored["report"]
    events = EventAccumulator(str(scored["run_dir"]), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    images = events.Tags()["images"]
    assert sorted(images) == sorted(f"eval/test/{name}" for name in (
        "confusion_matrix", "reliability", "roc_curves", "confident_mistakes",
        "per_class/precision", "per_class/recall", "per_class/f1"))
    for name in images:
        (image,) = events.Images(name)
        assert image.step == 1 and image.width >= 400 and image.height >= 400
        assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"

    scalars = events.Tags()["scalars"]
    assert not [s for s in scalars if s.count("/") > 2]  # eval/test/<name> only: no chart per class
    assert not [s for s in scalars if any(tag(c) in s for c in report["classes"])]
    assert events.Scalars("eval/test/ece")[0].value == pytest.approx(report["ece"], rel=1e-6)
    assert events.Scalars("eval/test/auroc")[0].value == pytest.approx(report["auroc"], rel=1e-6)

    curves = [t for t in events.Tags()["tensors"] if t.startswith("eval/test/pr_curve/")]
    assert curves == [f"eval/test/pr_curve/{tag(c)}" for c in report["classes"]]
    y, probs = scored["y"], scored["probs"]
    for c, name in enumerate(report["classes"]):
        tag_name = f"eval/test/pr_curve/{tag(name)}"
        assert events.SummaryMetadata(tag_name).plugin_data.plugin_name == "pr_curves"
        (event,) = events.Tensors(tag_name)
        tp, fp, tn, fn, precision, recall = make_ndarray(event.tensor_proto)
        assert (tp + fp + tn + fn == 300).all()
        assert tp[0] + fn[0] == report["per_class"][name]["support"] == (y == c).sum()  # threshold 0: all
        # Every threshold k / (T - 1): the samples whose probability of class c reaches it (the plugin's
        # bucketing), counted here from the independent probabilities.
        reached = np.floor(probs[:, c] * (len(tp) - 1))[None, :] >= np.arange(len(tp))[:, None]
        assert tp.tolist() == (reached & (y == c)).sum(1).tolist()
        assert fp.tolist() == (reached & (y != c)).sum(1).tolist()
        assert recall[0] == pytest.approx(1.0) and precision[0] == pytest.approx((y == c).mean(), rel=1e-6)


def test_feature_vectors_and_small_images_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The two bundled scikit-learn recipes, trained for two batches (the outputs, not the model, are
    tested here) and evaluated through the command: breast cancer's 30 features get no mistakes grid
    (one note says why), digits' 8x8 images get one."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.workflows.training import train

    for name, size, images in (("breast_cancer", 114, False), ("digits", 360, True)):
        recipe_path = REPO / "recipes" / f"{name}.yaml"
        overrides = ["trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.progress=false"]
        summary = train(load_recipe(recipe_path, [*overrides, f"logging.root={tmp_path}"]), recipe_path=recipe_path)
        run_dir = Path(summary["run_dir"])
        capsys.readouterr()
        assert main([str(recipe_path), "--checkpoint", str(run_dir / "checkpoints" / "best.pt"), *overrides]) == 0
        out = capsys.readouterr().out
        notes = [line for line in out.splitlines() if line.startswith("note: no grid of confident mistakes")]
        assert notes == ([] if images else ["note: no grid of confident mistakes in TensorBoard: the inputs are "
                                            "not images: 30 features a sample"])
        header, rows = read_csv(run_dir / "predictions-best-test.csv")
        assert len(rows) == size
        events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
        events.Reload()
        assert ("eval/test/confident_mistakes" in events.Tags()["images"]) == images
        assert "eval/test/reliability" in events.Tags()["images"]
        if name == "breast_cancer":
            assert header[:6] == ["index", "target", "target_name", "prediction", "prediction_name", "probability"]
            assert {row[2] for row in rows} == {"malignant", "benign"} and len(header) == 6 + 2 * 2  # top-2
            assert "each class against the rest, class benign's" in out  # the binary figure: class 1's
            ece, auroc = (next(line for line in out.splitlines() if line.startswith(key)) for key in ("ece ", "auroc "))
            assert "percentile bootstrap" in ece and "percentile bootstrap" in auroc


def test_per_class_figures_hold_every_class_value(scored) -> None:
    report = scored["report"]
    figures = evaluation_figures(report, "best.pt")
    for metric in ("precision", "recall", "f1"):
        (ax,) = figures[f"per_class/{metric}"].axes
        values = [report["per_class"][c][metric] for c in report["classes"]]
        assert [t.get_text() for t in ax.texts] == [f"{v:.4f}" for v in values]
        (dots,) = ax.lines
        assert dots.get_xdata().tolist() == pytest.approx(values)
        assert [t.get_text() for t in ax.get_yticklabels()] == [
            f"{c} ({report['per_class'][c]['support']})" for c in report["classes"]]
        assert ax.get_xlim()[0] <= min(values)  # every dot inside the axis
