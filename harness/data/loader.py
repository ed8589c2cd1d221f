"""The DataLoader path, for datasets that are not one tensor (files on disk, PIL transforms).

Sample order comes from `EpochSampler`, which yields exactly what `TensorLoader` visits for the
same seed, epoch, rank and world size, so switching paths changes speed, not results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.data.tensor_loader import check_rank, shard_indices, shard_size
from harness.errors import HarnessError


class EpochSampler(Sampler[int]):
    """Indices of one rank's share of `range(dataset_size)` for the epoch set by `set_epoch`.

    The order is `shard_indices(...)`: a pure function of (seed, epoch), padded across ranks
    when shuffling (training) and unpadded when not (validation). See `shard_indices`.
    """

    def __init__(
        self, dataset_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        check_rank(rank, world_size)
        self.dataset_size = dataset_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return shard_size(self.dataset_size, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size)

    def __iter__(self) -> Iterator[int]:
        index = shard_indices(
            self.dataset_size,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
        )
        return iter(index.tolist())


class EpochDataLoader(DataLoader):
    """A `DataLoader` driven by an `EpochSampler`; `set_epoch` forwards to it."""

    sampler: EpochSampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def default_num_workers() -> int:
    """min(4, CPUs this process may use): past ~4 workers small-image pipelines stop gaining."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    device: torch.device | str | None = None,
) -> EpochDataLoader:
    """A DataLoader over `dataset` whose order matches `TensorLoader` for the same arguments.

    Defaults: `num_workers=default_num_workers()`, `pin_memory` only when the batches go to a CUDA
    `device` (pinned host memory makes `.to("cuda", non_blocking=True)` asynchronous; for a CPU or MPS
    target it is only a copy; `device=None`: when CUDA is available), and
    `persistent_workers` whenever there are workers, so epochs do not pay the worker start-up.
    Worker random seeds come from a generator seeded with `seed`: runs repeat, but random
    augmentation inside workers is not replayed exactly on resume.
    """
    if batch_size < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers is None:
        num_workers = default_num_workers()
    if pin_memory is None:
        pin_memory = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    return EpochDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )
