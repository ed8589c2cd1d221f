"""Training augmentation: random crop with padding and horizontal flip.

Two implementations of the same two ops, chosen by the data path:

- `BatchAugment` (the `TensorLoader` path): whole uint8 batches on the device. One pad, then one
  gather crops every image at its own offset; a mirrored image reads its columns right to left in
  the same gather. No per-sample Python, no host sync.
- `augment_transforms` (the DataLoader path): torchvision.transforms.v2 per-sample transforms,
  run in the DataLoader workers.

The random choices of `BatchAugment` are drawn per *dataset sample* from a CPU generator seeded by
`(seed, epoch)`: sample i gets the same crop and flip in epoch e whatever the batch size, the rank
or a resume, and `tests/test_augment.py` checks that the result equals torchvision.transforms.v2's
functional ops applied image by image with the same choices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample random choices: crop offsets (after padding) and whether to mirror."""

    top: torch.Tensor  # int64 (N,)
    left: torch.Tensor  # int64 (N,)
    flip: torch.Tensor  # bool (N,)

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(self.top.to(device), self.left.to(device), self.flip.to(device))

    def take(self, index: torch.Tensor) -> AugmentParams:
        """The choices of the samples at `index` (a batch)."""
        return AugmentParams(self.top[index], self.left[index], self.flip[index])


class BatchAugment:
    """Random crop (after zero padding) then horizontal flip, on (B, C, H, W) batches of any dtype.

    Args:
        crop_size: output height = width; None keeps the image size (no crop).
        padding: zero pixels added on every side before cropping (torchvision's `fill=0`).
        flip_p: probability that an image is mirrored left-right.

        augment = BatchAugment(crop_size=32, padding=4, flip_p=0.5)
        params = augment.sample(len(dataset), image_size=(32, 32), seed=0, epoch=3)
        x = augment(images[batch], params.take(batch).to(images.device))
    """

    def __init__(self, crop_size: int | None = None, padding: int = 0, flip_p: float = 0.0) -> None:
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        if padding < 0 or not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"need padding >= 0 and 0 <= flip_p <= 1, got {padding}, {flip_p}")
        self.crop_size = crop_size
        self.padding = padding
        self.flip_p = flip_p

    def __repr__(self) -> str:
        return f"BatchAugment(crop_size={self.crop_size}, padding={self.padding}, flip_p={self.flip_p})"

    def sample(self, n: int, image_size: tuple[int, int], seed: int, epoch: int) -> AugmentParams:
        """Random choices for `n` samples of `image_size` (H, W), a pure function of `(seed, epoch)` (CPU)."""
        height, width = image_size
        # Hashed like epoch_permutation, and salted so the choices are not tied to the data order.
        digest = hashlib.blake2b(f"augment/{seed}/{epoch}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
        top = left = torch.zeros(n, dtype=torch.int64)
        if self.crop_size is not None:
            size, pad = self.crop_size, self.padding
            if size > min(height, width) + 2 * pad:
                raise ValueError(f"crop size {size} is larger than the {height}x{width} image padded by {pad}")
            # torchvision's RandomCrop draws top in [0, H + 2p - size] inclusive; the same range here
            top = torch.randint(0, height + 2 * pad - size + 1, (n,), generator=generator)
            left = torch.randint(0, width + 2 * pad - size + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.flip_p
        return AugmentParams(top, left, flip)

    def __call__(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Crop and flip every image of `x` (B, C, H, W) with its own choices; params on x's device.

        One gather reads each image's crop window from the flattened (padded) image; a mirrored
        image reads its columns right to left, so the flip costs nothing extra. (Two gathers, rows
        then columns, took 2x as long on CPU and a 4-index advanced indexing 4x.)
        """
        if self.crop_size is None and self.flip_p == 0:
            return x
        if self.crop_size is not None and self.padding:
            x = F.pad(x, (self.padding,) * 4)  # once per batch, zeros
        batch, channels, height, width = x.shape
        out_h, out_w = (self.crop_size, self.crop_size) if self.crop_size is not None else (height, width)
        rows = params.top.view(-1, 1) + torch.arange(out_h, device=x.device)  # (B, out_h)
        offsets = torch.arange(out_w, device=x.device)
        cols = params.left.view(-1, 1) + torch.where(params.flip.view(-1, 1), out_w - 1 - offsets, offsets)
        index = (rows.view(batch, out_h, 1) * width + cols.view(batch, 1, out_w)).view(batch, 1, -1)
        out = x.reshape(batch, channels, height * width).gather(2, index.expand(batch, channels, -1))
        return out.view(batch, channels, out_h, out_w)


def augment_transforms(crop_size: int | None = None, padding: int = 0, flip_p: float = 0.0) -> list[Any]:
    """The same ops as torchvision.transforms.v2 per-sample transforms (for the DataLoader path)."""
    from torchvision.transforms import v2  # noqa: PLC0415  (torchvision: only the DataLoader path needs it)

    transforms: list[Any] = []
    if crop_size is not None:
        transforms.append(v2.RandomCrop(crop_size, padding=padding or None, fill=0))
    if flip_p > 0:
        transforms.append(v2.RandomHorizontalFlip(flip_p))
    return transforms
