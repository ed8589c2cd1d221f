"""Augmentation: batched crop + flip equal torchvision.transforms.v2 per image, seeded, training only."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from harness.data import BatchAugment, TensorLoader, augment_transforms
from harness.errors import HarnessError
from harness.recipe.data import build_data
from harness.recipe.schema import AugmentConfig, DataConfig


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def per_image_reference(x: torch.Tensor, augment: BatchAugment, top, left, flip) -> torch.Tensor:
    """torchvision.transforms.v2's functional ops, one image at a time, with the given choices."""
    out = []
    for i in range(len(x)):
        image = x[i]
        if augment.crop_size is not None:
            image = TF.pad(image, [augment.padding], fill=0)
            image = TF.crop(image, int(top[i]), int(left[i]), augment.crop_size, augment.crop_size)
        if flip[i]:
            image = TF.horizontal_flip(image)
        out.append(image)
    return torch.stack(out)


@pytest.mark.parametrize(("crop_size", "padding", "flip_p"), [(32, 4, 0.5), (32, 0, 0.0), (24, 2, 1.0), (None, 0, 0.5)])
def test_batched_ops_equal_torchvision_per_image(images, crop_size, padding, flip_p) -> None:
    augment = BatchAugment(crop_size, padding, flip_p)
    params = augment.sample(len(images), (32, 32), seed=3, epoch=1)
    batched = augment(images, params)
    assert torch.equal(batched, per_image_reference(images, augment, params.top, params.left, params.flip))
    size = crop_size or 32
    assert batched.shape == (64, 3, size, size) and batched.dtype == torch.uint8


@pytest.mark.parametrize(("crop_size", "padding", "flip_p"), [(None, 0, 0.5), (20, 3, 0.5)])
def test_non_square_images(crop_size, padding, flip_p) -> None:
    x = torch.randint(0, 256, (16, 2, 24, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    augment = BatchAugment(crop_size, padding, flip_p)
    params = augment.sample(len(x), (24, 30), seed=0, epoch=0)
    assert torch.equal(augment(x, params), per_image_reference(x, augment, params.top, params.left, params.flip))


def test_choices_cover_the_range_torchvision_draws_from(images) -> None:
    augment = BatchAugment(32, 4, 0.5)
    params = augment.sample(20000, (32, 32), seed=0, epoch=0)
    # torchvision's RandomCrop: top, left uniform in [0, 32 + 2*4 - 32] = [0, 8]
    assert params.top.min() == 0 and params.top.max() == 8
    assert params.left.min() == 0 and params.left.max() == 8
    assert abs(params.flip.float().mean().item() - 0.5) < 0.02


def test_choices_are_a_pure_function_of_seed_and_epoch() -> None:
    augment = BatchAugment(32, 4, 0.5)
    a, b = (augment.sample(100, (32, 32), seed=1, epoch=2) for _ in range(2))
    assert torch.equal(a.top, b.top) and torch.equal(a.left, b.left) and torch.equal(a.flip, b.flip)
    c = augment.sample(100, (32, 32), seed=1, epoch=3)
    d = augment.sample(100, (32, 32), seed=2, epoch=2)
    assert not torch.equal(a.top, c.top) and not torch.equal(a.top, d.top)


def loader(images: torch.Tensor, augment: BatchAugment | None, **kwargs) -> TensorLoader:
    targets = torch.arange(len(images))  # target = sample index, to find each image's original
    return TensorLoader(images, targets, 16, mean=(0.5,) * 3, std=(0.25,) * 3, seed=7, augment=augment, **kwargs)


def test_tensor_loader_augments_each_sample_with_its_own_choices(images) -> None:
    augment = BatchAugment(32, 4, 0.5)
    plain, augmented = loader(images, None), loader(images, augment)
    params = augment.sample(len(images), (32, 32), seed=7, epoch=2)
    plain.set_epoch(2)
    augmented.set_epoch(2)
    for (x0, y0), (x1, y1) in zip(plain, augmented, strict=True):
        assert torch.equal(y0, y1)  # same order: augmentation does not touch the sampling
        raw = images[y1]
        expected = per_image_reference(raw, augment, params.top[y1], params.left[y1], params.flip[y1])
        assert torch.equal(x1, plain.normalize(expected))
        assert not torch.equal(x0, x1)


def test_tensor_loader_augmentation_repeats_per_epoch_and_varies_across_epochs(images) -> None:
    def epoch(e: int) -> torch.Tensor:
        data = loader(images, BatchAugment(32, 4, 0.5))
        data.set_epoch(e)
        x, y = (torch.cat(t) for t in zip(*data, strict=True))
        return x[y.argsort()]  # per sample, whatever the order

    assert torch.equal(epoch(1), epoch(1))
    assert not torch.equal(epoch(1), epoch(2))


def test_same_choices_per_sample_whatever_the_batch_size_or_rank(images) -> None:
    def by_sample(batch_size: int, world_size: int = 1) -> torch.Tensor:
        batches = [batch for rank in range(world_size)
                   for batch in TensorLoader(images, torch.arange(64), batch_size, mean=(0.5,) * 3, std=(0.25,) * 3,
                                             seed=7, augment=BatchAugment(32, 4, 0.5), shuffle=False, rank=rank,
                                             world_size=world_size)]
        x, y = (torch.cat(t) for t in zip(*batches, strict=True))
        return x[y.argsort()]

    assert torch.equal(by_sample(16), by_sample(5))
    assert torch.equal(by_sample(16), by_sample(16, world_size=2))


def cifar_cfg(fake_data, **augment) -> DataConfig:
    return DataConfig(name="cifar10", root=str(fake_data.root), download=False, val_size=10, batch_size=8,
                      augment=AugmentConfig(**augment))


def test_build_data_augments_training_batches_only(fake_data) -> None:
    on = build_data(cifar_cfg(fake_data, random_crop={"size": 32, "padding": 4}, horizontal_flip=0.5), "cpu", 0)
    off = build_data(DataConfig(name="cifar10", root=str(fake_data.root), download=False, val_size=10,
                                batch_size=8), "cpu", 0)
    assert on.train.augment is not None
    assert on.val.augment is None and on.test.augment is None
    for split in ("val", "test"):  # bit-identical to the un-augmented recipe's batches
        for (x0, y0), (x1, y1) in zip(getattr(off, split), getattr(on, split), strict=True):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
    x_off, _ = next(iter(off.train))
    x_on, _ = next(iter(on.train))
    assert x_on.shape == x_off.shape and not torch.equal(x_on, x_off)


def test_overfit_batches_are_not_augmented(fake_data) -> None:
    data = build_data(cifar_cfg(fake_data, horizontal_flip=1.0), "cpu", 0, overfit_batches=1)
    assert data.train.augment is None


def test_crop_must_keep_the_image_size(fake_data) -> None:
    with pytest.raises(HarnessError, match=r"random_crop.size=28 must equal the 32x32 image size"):
        build_data(cifar_cfg(fake_data, random_crop={"size": 28}), "cpu", 0)


def test_dataloader_path_uses_the_same_ops_from_torchvision(images) -> None:
    from torchvision.transforms import v2

    crop, flip = augment_transforms(32, 4, 0.5)
    assert isinstance(crop, v2.RandomCrop) and crop.padding == [4, 4, 4, 4] and crop.size == (32, 32)
    assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5
    assert augment_transforms() == []
