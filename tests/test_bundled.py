"""scikit-learn's bundled data sets (`harness.data.bundled`) on the real data: sizes, the fixed stratified
test split, standardisation from the training split only, feature vectors on the tensor path, and the
two shipped recipes end to end with `train` and `cv`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch
from conftest import REPO

from harness.data import (
    FeatureTensors,
    ImageTensors,
    TensorLoader,
    fixed_test_split,
    load_bundled,
    subset_classes,
)
from harness.errors import HarnessError
from harness.recipe.data import build_data, identify_test_split
from harness.recipe.schema import DataConfig, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

CANCER, DIGITS = "sklearn:breast_cancer", "sklearn:digits"


def everything(loader) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = zip(*loader, strict=True)
    return torch.cat(x), torch.cat(y)


# ---------------------------------------------------------------- sizes, classes, the fixed test split
@pytest.mark.parametrize(("name", "sizes", "class_counts"), [
    (CANCER, (455, 114), [212, 357]),
    (DIGITS, (1437, 360), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),
])
def test_sizes_classes_and_a_stratified_20_percent_test_split(name, sizes, class_counts) -> None:
    train, test = load_bundled(name)
    assert (len(train), len(test)) == sizes
    assert train.num_classes == test.num_classes == len(class_counts)
    counts = torch.tensor(class_counts)
    assert torch.equal(torch.bincount(train.targets) + torch.bincount(test.targets), counts)
    in_test = torch.bincount(test.targets, minlength=len(counts))
    assert torch.all(in_test >= counts // 5) and torch.all(in_test <= -(-counts // 5)), in_test  # 20 % of each class


def test_breast_cancer_is_feature_vectors_exactly_as_scikit_learn_gives_them() -> None:
    bunch = sklearn.datasets.load_breast_cancer()
    train, test = load_bundled(CANCER)
    assert isinstance(train, FeatureTensors) and train.features.dtype == torch.float32
    assert train.features.shape == (455, 30) and test.features.shape == (114, 30)
    assert train.classes == ["malignant", "benign"]  # scikit-learn's labels: 0 malignant, 1 benign
    train_idx, test_idx = fixed_test_split(torch.as_tensor(bunch.target))
    assert sorted([*train_idx.tolist(), *test_idx.tolist()]) == list(range(569))  # disjoint and covering
    for split, index in ((train, train_idx), (test, test_idx)):
        assert torch.equal(split.features, torch.as_tensor(bunch.data[index.numpy()], dtype=torch.float32))
        assert torch.equal(split.targets, torch.as_tensor(bunch.target[index.numpy()]))


def test_digits_are_8x8_uint8_images_with_pixels_0_to_16() -> None:
    bunch = sklearn.datasets.load_digits()
    train, test = load_bundled(DIGITS)
    assert isinstance(train, ImageTensors) and train.images.dtype == torch.uint8
    assert train.images.shape == (1437, 1, 8, 8) and int(train.images.max()) == 16
    assert train.classes == [str(d) for d in range(10)]
    _, test_idx = fixed_test_split(torch.as_tensor(bunch.target))
    assert torch.equal(test.images[:, 0], torch.as_tensor(bunch.images[test_idx.numpy()]).to(torch.uint8))


def test_the_test_split_is_fixed_whatever_the_run_seed() -> None:
    first, again = load_bundled(CANCER), load_bundled(CANCER)
    assert torch.equal(first[1].features, again[1].features) and first[1].mean == again[1].mean
    cfg = DataConfig(name=CANCER, val_size=50, eval_batch_size=1000)
    runs = [build_data(cfg, torch.device("cpu"), seed) for seed in (0, 1)]
    tests = [everything(run.test) for run in runs]
    assert torch.equal(tests[0][0], tests[1][0]) and torch.equal(tests[0][1], tests[1][1])
    vals = [everything(run.val)[0] for run in runs]  # the hold-out follows trainer.seed; the test split does not
    assert len(vals[0]) == len(vals[1]) == 50 and not torch.equal(vals[0], vals[1])
    assert identify_test_split(cfg) == identify_test_split(cfg.model_copy(update={"val_size": 10}))


# ---------------------------------------------------------------- standardisation: the training split only
def test_breast_cancer_statistics_are_the_training_splits() -> None:
    bunch = sklearn.datasets.load_breast_cancer()
    train, _ = load_bundled(CANCER)
    train_idx, _ = fixed_test_split(torch.as_tensor(bunch.target))
    rows = bunch.data[train_idx.numpy()]
    np.testing.assert_allclose(train.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(train.std, rows.std(0), rtol=1e-12)  # population std, as StandardScaler
    assert not np.allclose(train.mean, bunch.data.mean(0), rtol=1e-4)  # all 569 rows would give other numbers
    x, _ = everything(TensorLoader(train.features, train.targets, 64, mean=train.mean, std=train.std, shuffle=False))
    assert x.shape == (455, 30) and x.dtype == torch.float32  # feature vectors, not 1x1x30 images
    torch.testing.assert_close(x.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, correction=0), torch.ones(30), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [CANCER, DIGITS])
def test_test_samples_do_not_reach_the_statistics(name, monkeypatch) -> None:
    """Blow the test samples up a thousandfold: the mean and std, and the training data, stay the same."""
    loader = {CANCER: "load_breast_cancer", DIGITS: "load_digits"}[name]
    real = getattr(sklearn.datasets, loader)
    clean_train, clean_test = load_bundled(name)

    def poisoned():
        bunch = real()
        _, test_idx = fixed_test_split(torch.as_tensor(bunch.target))
        for key in ("data", "images"):
            if key in bunch:
                bunch[key] = bunch[key].copy()
                bunch[key][test_idx.numpy()] = 16 if name == DIGITS else bunch[key][test_idx.numpy()] * 1000
        return bunch

    monkeypatch.setattr(sklearn.datasets, loader, poisoned)
    train, test = load_bundled(name)
    assert (train.mean, train.std) == (clean_train.mean, clean_train.std)
    assert test.mean == clean_test.mean == clean_train.mean  # the test split carries the training statistics
    assert torch.equal(train.inputs, clean_train.inputs) and not torch.equal(test.inputs, clean_test.inputs)


def test_digits_statistics_are_the_training_pixels() -> None:
    train, test = load_bundled(DIGITS)
    pixels = train.images.double() / 255
    assert train.mean == pytest.approx((float(pixels.mean()),), rel=1e-12)
    assert train.std == pytest.approx((float(pixels.std(correction=0)),), rel=1e-12)
    assert test.mean == train.mean and test.std == train.std
    data = build_data(DataConfig(name=DIGITS, val_size=0), torch.device("cpu"), 0)
    x, _ = everything(data.test)
    expected = (test.images.double() - 255 * train.mean[0]) / (255 * train.std[0])
    torch.testing.assert_close(x, expected.float(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- what features do not take
def test_feature_vectors_refuse_image_options() -> None:
    train, _ = load_bundled(CANCER)
    with pytest.raises(ValueError, match="for images"):
        TensorLoader(train.features, train.targets, 8, mean=train.mean, std=train.std, channels_last=True)
    with pytest.raises(ValueError, match="30 features but mean/std have 1"):
        TensorLoader(train.features, train.targets, 8, mean=(0.0,), std=(1.0,))
    for override, message in ((["data.mean=[0.5]", "data.std=[0.2]"], "per image channel"),
                              (["data.augment={horizontal_flip: 0.5}"], "crops and flips images")):
        recipe = load_recipe(REPO / "recipes" / "breast_cancer.yaml", override)
        with pytest.raises(HarnessError, match=message) as info:
            build_data(recipe.data, torch.device("cpu"), 0)
        assert "\n" not in str(info.value)


def test_class_subsets_of_feature_vectors() -> None:
    train, _ = load_bundled(CANCER)
    swapped = subset_classes(train, [1, 0])
    assert isinstance(swapped, FeatureTensors) and swapped.classes == ["benign", "malignant"]
    assert torch.equal(swapped.targets, 1 - train.targets) and torch.equal(swapped.features, train.features)


def test_unknown_names_and_missing_scikit_learn_are_one_line(monkeypatch) -> None:
    with pytest.raises(HarnessError, match="sklearn:breast_cancer, sklearn:digits"):
        load_recipe(REPO / "recipes" / "digits.yaml", ["data.name=sklearn:iris"])
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails, as without scikit-learn
    with pytest.raises(HarnessError, match=r"needs scikit-learn, which is not installed: pip install") as info:
        load_bundled(DIGITS)
    assert "\n" not in str(info.value)


def test_import_does_not_import_scikit_learn() -> None:
    code = "import sys, harness.data, harness.recipe.data; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_export_metadata_describes_feature_standardisation() -> None:
    from harness.workflows.export import export_metadata

    recipe = load_recipe(REPO / "recipes" / "breast_cancer.yaml")
    data = build_data(recipe.data, torch.device("cpu"), 0)
    batch, _ = next(iter(data.test))
    meta = export_metadata(recipe, "best.pt", 1, "model", batch, data.test, data.classes)
    assert meta["input_shape"] == ["batch", 30] and "per feature" in meta["preprocessing"]
    assert meta["mean"] == pytest.approx(list(load_bundled(CANCER)[0].mean))


# ---------------------------------------------------------------- the shipped recipes, end to end
@pytest.mark.parametrize(("recipe", "overrides", "chance"), [
    ("breast_cancer.yaml", ["trainer.epochs=3"], 357 / 569),  # chance: always "benign"
    ("digits.yaml", ["trainer.epochs=2"], 0.1),
])
def test_recipe_trains_end_to_end_above_chance(tmp_path: Path, monkeypatch, recipe, overrides, chance) -> None:
    from harness.train import main

    monkeypatch.chdir(tmp_path)
    assert main([str(REPO / "recipes" / recipe), "trainer.progress=false", "trainer.device=cpu",
                 f"logging.root={tmp_path / 'runs'}", *overrides]) == 0
    summary = json.loads(next((tmp_path / "runs").glob("*/*/summary.json")).read_text())
    assert summary["test_samples"] == {"breast_cancer.yaml": 114, "digits.yaml": 360}[recipe]
    assert summary["test"]["acc"] > chance + 0.2, summary["test"]


def test_cv_on_breast_cancer(tmp_path: Path, capsys) -> None:
    from harness.cv import main

    assert main([str(REPO / "recipes" / "breast_cancer.yaml"), "--folds", "3", "trainer.epochs=2",
                 "trainer.progress=false", "trainer.device=cpu", f"logging.root={tmp_path / 'runs'}"]) == 0
    (cv_dir,) = (tmp_path / "runs" / "breast_cancer-cv").iterdir()
    result = json.loads((cv_dir / "cv.json").read_text())
    # the folds cut the 455 training samples; the 114 test samples are never among them
    assert sorted(f["val_size"] for f in result["per_fold"]) == [151, 152, 152]
    assert all(f["metrics"]["val/acc"] > 0.7 for f in result["per_fold"])
    assert f"{result['mean']['val/acc']:.4f} ± {result['std']['val/acc']:.4f}" in capsys.readouterr().out
