"""Map-style datasets for the DataLoader path: class-per-folder images, class subsets, sample subsets.

    splits = load_image_folder("pets", image_size=64)   # pets/train/<class>/*.jpg, pets/test/..., pets/val/...
    loader = make_dataloader(splits.train, batch_size=64, num_workers=4, collate_fn=splits.collate_fn)

Images are decoded by the DataLoader's workers with torchvision.transforms.v2; nothing is decoded
up front. A sample stays uint8 (decode, resize, augment); the collate function normalises the
whole batch in one fused op (`Uint8Normalize`) instead of two ops per image (ToDtype + Normalize):
10-20 % more images/s on 28x28 PNGs, one worker, 2-core CPU. torchvision is imported inside the
functions, so `import harness` does not pay for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, default_collate

from harness.data.tensor_loader import Uint8Normalize
from harness.errors import HarnessError

# Per-channel mean / std of ImageNet's training images ([0, 1] scale): the usual choice for
# natural photographs and what torchvision's pretrained models expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FOLDER_SPLITS = ("train", "val", "test")


@dataclass
class FolderSplits:
    """The splits of a class-per-folder image set (`load_image_folder`)."""

    train: Dataset  # <root>/train with the training transforms (augmentation)
    train_eval: Dataset  # the same files with the evaluation transforms: where a val hold-out is taken from
    val: Dataset | None  # <root>/val when that folder exists
    test: Dataset  # <root>/test
    classes: list[str]  # sorted names of <root>/train's sub-folders; target i is classes[i]
    collate_fn: NormalizeCollate  # uint8 samples -> one normalised float32 batch


class NormalizeCollate:
    """DataLoader `collate_fn`: stack `(uint8 image, target)` samples, then normalise the batch once."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.normalize = Uint8Normalize(mean, std)

    def __call__(self, samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = default_collate(samples)
        return self.normalize(images), targets


def image_transform(image_size: int, augment: Sequence[Any] = ()) -> Any:
    """PIL image -> uint8 (C, image_size, image_size); `augment` runs on the resized uint8 image."""
    from torchvision.transforms import v2  # noqa: PLC0415  (torchvision: slow to import, image folders only)

    return v2.Compose([
        v2.Resize((image_size, image_size)),  # on the PIL image: PIL's resampling, antialiased
        v2.PILToTensor(),  # uint8 (C, H, W)
        *augment,
    ])


def load_image_folder(
    root: str | os.PathLike,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: Sequence[Any] = (),
) -> FolderSplits:
    """Read `<root>/train/<class>/<image>`, `<root>/test/<class>/<image>` and, if present, `<root>/val/...`.

    Class indices follow the sorted sub-folder names of `train/` (torchvision's `ImageFolder` rule);
    `val/` and `test/` may lack a class but not add one. Images are converted to RGB, resized to
    `image_size` x `image_size` and augmented (training only) as uint8; `collate_fn` normalises
    the batches with `mean` / `std`.
    """
    from torchvision.datasets import ImageFolder  # noqa: PLC0415  (as above)

    root = Path(root)
    layout = f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image> (optional {root}/val/...)"
    missing = [s for s in ("train", "test") if not (root / s).is_dir()]
    if missing:
        raise HarnessError(f"image_folder: no {' or '.join(f'{s}/' for s in missing)} folder in {root}: {layout}")
    if len(mean) != 3 or len(std) != 3:
        raise HarnessError(f"image_folder images are RGB: data.mean and data.std need 3 values, got {mean}, {std}")

    def folder(split: str, transform: Any, classes: list[str] | None = None) -> Any:
        try:
            ds = ImageFolder(str(root / split), transform=transform, allow_empty=classes is not None)
        except (FileNotFoundError, OSError) as e:  # no class folders, or no image files in them
            raise HarnessError(f"image_folder: {root / split}: {e}; {layout}") from None
        if classes is not None:  # number val/ and test/ classes as train/ does
            extra = sorted(set(ds.classes) - set(classes))
            if extra:
                raise HarnessError(f"image_folder: {root / split} has classes {extra} that {root / 'train'} lacks")
            index = {name: i for i, name in enumerate(classes)}
            ds.samples = [(path, index[ds.classes[t]]) for path, t in ds.samples]
            ds.imgs, ds.targets = ds.samples, [t for _, t in ds.samples]
            ds.classes, ds.class_to_idx = list(classes), index
        return ds

    train = folder("train", image_transform(image_size, augment))
    classes = list(train.classes)
    eval_transform = image_transform(image_size)
    return FolderSplits(
        train=train,
        train_eval=folder("train", eval_transform, classes),
        val=folder("val", eval_transform, classes) if (root / "val").is_dir() else None,
        test=folder("test", eval_transform, classes),
        classes=classes,
        collate_fn=NormalizeCollate(mean, std),
    )


def dataset_targets(dataset: Any) -> torch.Tensor:
    """The int64 targets of a map-style dataset, without decoding a sample.

    Read from `dataset.targets` (torchvision's datasets, `ImageFolder`), through `Subset`s and
    `ClassSubset`s; any other dataset must have a `targets` attribute for class subsets.
    """
    if isinstance(dataset, ClassSubset):
        return dataset.relabel[dataset_targets(dataset.dataset)[dataset.indices]]
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise HarnessError(f"{type(dataset).__name__} has no `targets` attribute: data.classes needs the labels "
                           "of every sample without loading it")
    return torch.as_tensor(targets, dtype=torch.int64)


class ClassSubset(Dataset):
    """The samples of `dataset` at `indices`, their targets mapped through the table `relabel`."""

    def __init__(self, dataset: Any, indices: torch.Tensor, relabel: torch.Tensor, classes: list[str]) -> None:
        self.dataset, self.indices, self.relabel, self.classes = dataset, indices, relabel, classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y = self.dataset[int(self.indices[i])]
        return x, int(self.relabel[int(y)])


def select_classes(dataset: Any, classes: list[int], names: Sequence[str]) -> ClassSubset:
    """Keep the samples of `classes`, relabelled 0..k-1 in the order given (`subset_classes` for
    map-style datasets); `names` are the dataset's class names."""
    if not classes or len(set(classes)) != len(classes):
        raise HarnessError(f"classes must be a non-empty list without repeats, got {classes}")
    bad = [c for c in classes if not 0 <= c < len(names)]
    if bad:
        raise HarnessError(f"classes {bad} out of range: this dataset has classes 0..{len(names) - 1}")
    relabel = torch.full((len(names),), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    keep = torch.nonzero(relabel[dataset_targets(dataset)] >= 0).flatten()
    return ClassSubset(dataset, keep, relabel, [names[c] for c in classes])
