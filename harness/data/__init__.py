"""Data: datasets decoded once into tensors, and the two ways to batch them.

- `load_dataset` -> `ImageTensors` (uint8 images, int64 targets, classes, mean/std).
- `TensorLoader`: the fast path, the whole dataset on the device, one gather + one fused
  normalisation per batch.
- `make_dataloader`: the `torch.utils.data.DataLoader` path for anything else; its
  `EpochSampler` visits samples in the same order as `TensorLoader`.

Nothing here imports torchvision until a dataset is actually loaded.
"""

from harness.data.datasets import (
    DATASETS,
    DatasetSpec,
    ImageTensors,
    dataset_spec,
    load_dataset,
    resolve_data_root,
    subset_classes,
)
from harness.data.loader import (
    EpochDataLoader,
    EpochSampler,
    default_num_workers,
    make_dataloader,
)
from harness.data.split import train_val_split
from harness.data.tensor_loader import (
    TensorLoader,
    Uint8Normalize,
    epoch_permutation,
    shard_indices,
    shard_size,
)

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "EpochDataLoader",
    "EpochSampler",
    "ImageTensors",
    "TensorLoader",
    "Uint8Normalize",
    "dataset_spec",
    "default_num_workers",
    "epoch_permutation",
    "load_dataset",
    "make_dataloader",
    "resolve_data_root",
    "shard_indices",
    "shard_size",
    "subset_classes",
    "train_val_split",
]
