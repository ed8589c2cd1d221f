"""Stratified K-fold indices: a pure function of the labels, K and a seed.

    folds = stratified_folds(targets, k=5, seed=0)   # K sorted int64 tensors of held-out indices
    for train_idx, val_idx in fold_splits(folds): ...

Every class's samples are shuffled (seeded) and dealt round-robin to the folds, each class starting
where the previous one stopped. So the folds are disjoint and cover every index; each fold holds
floor(n_c / K) or ceil(n_c / K) samples of every class c (class ratios within one sample per class);
and the fold sizes differ by at most one.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError


def stratified_folds(targets: torch.Tensor, k: int, seed: int = 0) -> list[torch.Tensor]:
    """Split `range(len(targets))` into `k` disjoint, class-balanced folds of held-out indices.

    `targets` holds integer class labels. The result depends only on `(targets, k, seed)` (a CPU
    `torch.Generator`). Each fold's indices are sorted. `k` must be at least 2 and at most the
    number of samples of the smallest class present, otherwise a fold would miss that class.
    """
    targets = torch.as_tensor(targets).cpu()
    if targets.ndim != 1 or targets.dtype.is_floating_point or (len(targets) and int(targets.min()) < 0):
        raise HarnessError(f"stratified folds need a 1-D tensor of labels >= 0, got {targets.dtype} "
                           f"of shape {tuple(targets.shape)}")
    counts = torch.bincount(targets) if len(targets) else torch.zeros(0, dtype=torch.int64)
    present = counts[counts > 0]
    if k < 2:
        raise HarnessError(f"folds must be at least 2 (K-fold cross-validation holds out 1/K each time), got {k}")
    if len(present) == 0 or k > int(present.min()):
        smallest = int(present.min()) if len(present) else 0
        raise HarnessError(f"folds={k} is more than the {smallest} samples of the smallest class: "
                           f"every fold must hold every class, so use folds <= {smallest}")
    generator = torch.Generator().manual_seed(seed)
    assigned = torch.empty_like(targets)  # fold number of every sample
    start = 0  # the fold that receives the next class's first sample
    for label in torch.nonzero(counts).flatten().tolist():
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assigned[members] = (start + torch.arange(len(members))) % k
        start = (start + len(members)) % k
    return [torch.nonzero(assigned == fold).flatten() for fold in range(k)]


def fold_splits(folds: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(train_idx, val_idx)` per fold: train on every other fold, validate on this one (both sorted)."""
    return [(torch.cat([f for j, f in enumerate(folds) if j != i]).sort().values, val)
            for i, val in enumerate(folds)]
