"""Data sources for `data.name: import:fake_sources:<function>` in tests (tests/ is on sys.path).

Each function takes the recipe's DataConfig and returns {"train", "test", optional "val", "classes"}.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from harness.data import load_dataset

CLASSES = ["zero", "one", "two", "three"]


def tensors(cfg):
    """The fake MNIST under cfg.root as ImageTensors: the tensor path, like a built-in dataset."""
    return {"train": load_dataset("mnist", cfg.root, train=True, download=False),
            "test": load_dataset("mnist", cfg.root, train=False, download=False)}


class Points(Dataset):
    """n float vectors of 6 features; target = sample index % 4, listed in `targets`."""

    def __init__(self, n: int, seed: int) -> None:
        self.x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
        self.targets = [i % 4 for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i]


def datasets(cfg):
    """Map-style datasets: the DataLoader path."""
    return {"train": Points(40, seed=0), "test": Points(12, seed=1), "classes": CLASSES}


def loaders(cfg):
    """Ready loaders: used as they are."""
    return {"train": DataLoader(Points(40, seed=0), batch_size=cfg.batch_size, shuffle=True),
            "val": DataLoader(Points(8, seed=2), batch_size=4),
            "test": DataLoader(Points(12, seed=1), batch_size=4),
            "classes": CLASSES}


def not_a_dict(cfg):
    return [Points(4, seed=0)]


def unknown_key(cfg):
    return {"train": Points(4, seed=0), "test": Points(4, seed=1), "classes": CLASSES, "extra": 1}
