"""Seeded hold-out split of a training set into train and validation indices."""

from __future__ import annotations

import torch

from harness.errors import HarnessError


def train_val_split(n: int, val_size: int = 5000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `range(n)` into disjoint `(train_idx, val_idx)` int64 tensors, `val_size` held out.

    The choice depends only on `(n, val_size, seed)` (a CPU `torch.Generator`), so every run,
    device and rank holds out the same samples. Both index tensors are sorted, which keeps
    gathers from the image tensor in memory order; loaders shuffle anyway.
    """
    if not 0 <= val_size < n:
        raise HarnessError(f"val_size must be >= 0 and < the {n} training samples, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def random_subset(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """`size` distinct indices of `range(n)`, sorted; which ones depends only on `(n, size, seed)`."""
    if not 0 < size <= n:
        raise HarnessError(f"subset size must be > 0 and <= the {n} samples, got {size}")
    # A generator of its own (seed + 1): not the permutation train_val_split draws with `seed`.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    return order[:size].sort().values
