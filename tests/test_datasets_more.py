"""Data sets by name beyond MNIST: Fashion-MNIST, CIFAR-10, image folders, import functions;
class subsets and training-set budgets; the shipped recipes run one epoch on fake-format files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, best_pt_test_accuracy

from harness.data import EpochDataLoader, TensorLoader, train_val_split
from harness.errors import HarnessError
from harness.recipe.data import build_data
from harness.recipe.schema import DataConfig, load_recipe


def data_cfg(fake_data, name: str, **kwargs) -> DataConfig:
    return DataConfig(name=name, root=str(fake_data.root), download=False, **kwargs)


def everything(loader) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = zip(*loader, strict=True)
    return torch.cat(x), torch.cat(y)


# ---------------------------------------------------------------- built-in datasets by name
@pytest.mark.parametrize(("name", "shape"), [("fashion_mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_builtin_datasets_by_name_take_the_tensor_path(fake_data, name, shape) -> None:
    data = build_data(data_cfg(fake_data, name, val_size=5, batch_size=4), "cpu", seed=0)
    assert isinstance(data.train, TensorLoader) and data.num_classes == 10
    images, targets = fake_data.arrays[name][False]
    x, y = everything(data.test)
    assert x.shape == (len(images), *shape)
    assert torch.equal(y, torch.as_tensor(targets))
    expected = data.test.normalize(torch.as_tensor(images))  # uint8 NCHW as stored, normalised
    assert torch.equal(x, expected)


def test_unknown_dataset_name_lists_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("data: {name: cifar100}\n")
    with pytest.raises(HarnessError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "data.name" in message and "unknown dataset 'cifar100'" in message and "\n" not in message
    for choice in ("mnist", "fashion_mnist", "cifar10", "image_folder", "import:package.module:function"):
        assert choice in message


# ---------------------------------------------------------------- data.classes, data.train_size
def test_classes_keep_and_relabel_every_split(fake_data) -> None:
    cfg = data_cfg(fake_data, "mnist", classes=[7, 2, 5], val_size=3, batch_size=4)
    data = build_data(cfg, "cpu", seed=0)
    assert data.num_classes == 3 and data.classes == ["7 - seven", "2 - two", "5 - five"]
    train_labels = fake_data.arrays["mnist"][True][1]
    test_labels = fake_data.arrays["mnist"][False][1]
    _, y_test = everything(data.test)
    relabel = {7: 0, 2: 1, 5: 2}
    assert y_test.tolist() == [relabel[int(t)] for t in test_labels if int(t) in relabel]
    _, y_train = everything(data.train)
    _, y_val = everything(data.val)
    kept = sorted(relabel[int(t)] for t in train_labels if int(t) in relabel)
    assert sorted(y_train.tolist() + y_val.tolist()) == kept
    assert len(y_val) == 3


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_validation_hold_out_is_drawn_with_the_runs_seed(fake_data, seed: int) -> None:
    """README: the hold-out is seeded by `trainer.seed`: it is exactly the images
    `train_val_split(n, val_size, seed)` picks, and another seed holds out others."""
    images, targets = (torch.as_tensor(a) for a in fake_data.arrays["mnist"][True])
    data = build_data(data_cfg(fake_data, "mnist", val_size=10, batch_size=5), "cpu", seed)
    _, val_idx = train_val_split(len(targets), 10, seed)
    x_val, y_val = everything(data.val)
    assert torch.equal(x_val, data.val.normalize(images[val_idx]))
    assert torch.equal(y_val, targets[val_idx])
    _, other_idx = train_val_split(len(targets), 10, seed + 1)
    assert set(val_idx.tolist()) != set(other_idx.tolist())
    other = build_data(data_cfg(fake_data, "mnist", val_size=10, batch_size=5), "cpu", seed + 1)
    assert not torch.equal(everything(other.val)[0], x_val)


def test_train_size_is_a_seeded_subset_disjoint_from_validation(fake_data) -> None:
    def split(seed: int) -> tuple[set[int], set[int]]:
        # identify images by their bytes: the fake images are random, so all distinct
        data = build_data(data_cfg(fake_data, "mnist", val_size=10, train_size=12, batch_size=5), "cpu", seed)
        keys = [{x.numpy().tobytes() for x in everything(loader)[0]} for loader in (data.train, data.val)]
        return keys[0], keys[1]

    train, val = split(0)
    assert len(train) == 12 and len(val) == 10 and not train & val
    assert split(0) == (train, val)
    assert split(1)[0] != train
    with pytest.raises(HarnessError, match=r"data.train_size=31 is more than the 30 training images"):
        build_data(data_cfg(fake_data, "mnist", val_size=10, train_size=31), "cpu", 0)


# ---------------------------------------------------------------- image_folder
COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


def write_image_folder(root: Path, splits: dict[str, dict[str, int]]) -> None:
    """root/<split>/<class>/<i>.png: solid-colour images of varying sizes (the class's colour)."""
    from PIL import Image

    for split, counts in splits.items():
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20 + 3 * i, 16 + i), COLOURS[name]).save(folder / f"{i}.png")


def folder_cfg(root: Path, **kwargs) -> DataConfig:
    return DataConfig(name="image_folder", root=str(root), image_size=8, batch_size=4, num_workers=0, **kwargs)


def test_image_folder_decodes_resizes_and_normalises_through_dataloaders(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": {"cat": 4, "dog": 4, "fox": 4}, "test": {"cat": 2, "dog": 1}})
    data = build_data(folder_cfg(tmp_path, val_size=3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]), "cpu", 0)
    assert isinstance(data.train, EpochDataLoader) and data.train.num_workers == 0
    assert data.classes == ["cat", "dog", "fox"] and data.num_classes == 3
    x, y = everything(data.test)
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [0, 0, 1]  # test/ lacks fox: still numbered as train/
    expected = (torch.tensor(COLOURS["cat"]) / 255 - 0.5) / 0.25
    assert torch.allclose(x[0], expected.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    assert len(everything(data.val)[1]) == 3 and len(everything(data.train)[1]) == 9


def test_image_folder_uses_its_val_folder_and_class_subsets(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": {"cat": 3, "dog": 3, "fox": 3}, "val": {"dog": 2, "fox": 1},
                                  "test": {"cat": 1, "dog": 1, "fox": 1}})
    data = build_data(folder_cfg(tmp_path, classes=[2, 1]), "cpu", 0)  # fox -> 0, dog -> 1
    assert data.classes == ["fox", "dog"]
    assert sorted(everything(data.val)[1].tolist()) == [0, 1, 1]  # val/ itself, not a hold-out
    assert sorted(everything(data.train)[1].tolist()) == [0, 0, 0, 1, 1, 1]
    assert sorted(everything(data.test)[1].tolist()) == [0, 1]


def test_image_folder_augments_training_images_only(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    write_image_folder(tmp_path, {"train": {"cat": 4, "dog": 4}, "test": {"cat": 1, "dog": 1}})
    cfg = folder_cfg(tmp_path, val_size=2, augment={"random_crop": {"size": 8, "padding": 2}, "horizontal_flip": 0.5})
    data = build_data(cfg, "cpu", 0)

    def ops(loader) -> list[type]:
        dataset = loader.dataset
        while hasattr(dataset, "dataset"):  # Subset -> ImageFolder
            dataset = dataset.dataset
        return [type(t) for t in dataset.transform.transforms]

    assert v2.RandomCrop in ops(data.train) and v2.RandomHorizontalFlip in ops(data.train)
    for loader in (data.val, data.test):
        assert v2.RandomCrop not in ops(loader) and v2.RandomHorizontalFlip not in ops(loader)


@pytest.mark.parametrize(
    ("splits", "expected"),
    [
        ({}, "image_folder: no train/ or test/ folder in"),
        ({"train": {"cat": 1}}, "no test/ folder"),
        ({"train": {"cat": 1}, "test": {"dog": 1}}, "has classes ['dog'] that"),
    ],
)
def test_image_folder_layout_errors_are_one_line(tmp_path: Path, splits, expected) -> None:
    root = tmp_path / "pets"
    root.mkdir()
    write_image_folder(root, splits)
    with pytest.raises(HarnessError) as info:
        build_data(folder_cfg(root), "cpu", 0)
    assert expected in str(info.value) and "\n" not in str(info.value)
    if not splits:
        assert f"{root}/train/<class>/<image>" in str(info.value)


# ---------------------------------------------------------------- import:package.module:function
def test_import_function_returning_tensors_gets_the_tensor_path(fake_data) -> None:
    cfg = data_cfg(fake_data, "import:fake_sources:tensors", val_size=5, classes=[0, 1], augment={"horizontal_flip": 1})
    data = build_data(cfg, "cpu", 0)
    assert isinstance(data.train, TensorLoader) and data.train.augment is not None
    assert data.num_classes == 2 and set(everything(data.test)[1].tolist()) == {0, 1}


def test_import_function_returning_datasets_gets_the_dataloader_path() -> None:
    # 40 points of classes 0..3; keep 3 and 1 (20 points), hold out 8, train on a seeded 10 of the other 12
    cfg = DataConfig(name="import:fake_sources:datasets", val_size=8, train_size=10, classes=[3, 1], batch_size=4,
                     num_workers=0)
    data = build_data(cfg, "cpu", 0)
    assert isinstance(data.train, EpochDataLoader) and data.classes == ["three", "one"]
    x, y = everything(data.train)
    assert x.shape == (10, 6) and set(y.tolist()) <= {0, 1}
    assert len(everything(data.val)[1]) == 8
    assert everything(data.test)[1].tolist() == [1, 0, 1, 0, 1, 0]  # test targets 1, 3, ... -> 1, 0


def test_import_function_returning_loaders_uses_them_as_they_are() -> None:
    data = build_data(DataConfig(name="import:fake_sources:loaders", batch_size=5), "cpu", 0)
    assert data.classes == ["zero", "one", "two", "three"]
    assert len(everything(data.val)[1]) == 8 and next(iter(data.train))[0].shape == (5, 6)
    with pytest.raises(HarnessError, match=r"data\.train_size"):
        build_data(DataConfig(name="import:fake_sources:loaders", train_size=3), "cpu", 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("import:fake_sources:nope", "cannot import it"),
        ("import:no_such_module:f", "cannot import it"),
        ("import:fake_sources:not_a_dict", "must return a dict with 'train' and 'test'"),
        ("import:fake_sources:unknown_key", "unknown keys ['extra']"),
    ],
)
def test_import_errors_are_one_line(name: str, expected: str) -> None:
    with pytest.raises(HarnessError) as info:
        build_data(DataConfig(name=name), "cpu", 0)
    assert expected in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- the shipped recipes, one epoch each
@pytest.mark.parametrize(("recipe", "overrides"), [
    ("fashion_mnist.yaml", []),
    ("cifar10_resnet.yaml", ["model.args.depth=8", "scheduler.warmup_epochs=0"]),
])
def test_recipe_runs_one_epoch_on_fake_files(fake_data, tmp_path: Path, monkeypatch, recipe: str,
                                             overrides: list[str]) -> None:
    from harness.train import main

    monkeypatch.chdir(tmp_path)
    args = [str(REPO / "recipes" / recipe), f"data.root={fake_data.root}", "data.download=false", "data.val_size=10",
            "data.batch_size=8", "trainer.epochs=1", "trainer.progress=false", "trainer.device=cpu",
            f"logging.root={tmp_path / 'runs'}", *overrides]
    assert main(args) == 0
    summary_file = next((tmp_path / "runs").glob("*/*/summary.json"))
    summary = json.loads(summary_file.read_text())
    assert summary["epochs_run"] == 1 and summary["tested_weights"].startswith("best.pt")
    correct, total = best_pt_test_accuracy(summary_file.parent, fake_data.root)
    assert total == {"fashion_mnist.yaml": 20, "cifar10_resnet.yaml": 10}[recipe]  # the fake test splits
    assert summary["test"]["acc"] == pytest.approx(correct / total, abs=1e-6)
    assert np.isfinite(summary["final"]["train/loss"])
