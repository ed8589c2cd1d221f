"""Data: datasets decoded once into tensors, and the two ways to batch them.

- `load_dataset` -> `ImageTensors` (uint8 images, int64 targets, classes, mean/std).
- `load_bundled`: scikit-learn's bundled breast_cancer (`FeatureTensors`: float feature vectors)
  and digits (`ImageTensors`), with a fixed stratified test split.
- `TensorLoader`: the fast path, the whole dataset on the device, one gather + one fused
  normalisation per batch.
- `make_dataloader`: the `torch.utils.data.DataLoader` path for anything else; its
  `EpochSampler` visits samples in the same order as `TensorLoader`.
- `BatchAugment`: random crop + flip of whole batches on the device (the TensorLoader path);
  `augment_transforms`: the same as torchvision.transforms.v2 per-sample transforms.
- `load_image_folder`: a user's class-per-folder images as map-style datasets (DataLoader path).
- `load_text_chars`: a text file as character ids (`CharText`), batched as `RandomWindows` (training)
  and `SequentialWindows` (validation), on the device.
- `load_text_lines`: sentences, one file per class and one per line (`TextLines`), a `Vocabulary` built
  from a training split only, and `TextLoader`, batches of token ids padded to each batch's longest.

Nothing here imports torchvision (or scikit-learn) until a dataset is actually loaded.
"""

from harness.data.augment import AugmentParams, BatchAugment, augment_transforms
from harness.data.bundled import BUNDLED, fixed_test_split, load_bundled
from harness.data.datasets import (
    DATASETS,
    TENSOR_SPLITS,
    DatasetSpec,
    FeatureTensors,
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
from harness.data.map_style import (
    ClassSubset,
    FolderSplits,
    dataset_targets,
    load_image_folder,
    select_classes,
)
from harness.data.split import random_subset, train_val_split
from harness.data.tensor_loader import (
    FeatureStandardize,
    TensorLoader,
    Uint8Normalize,
    epoch_generator,
    epoch_permutation,
    shard_indices,
    shard_size,
)
from harness.data.text_chars import (
    CharText,
    RandomWindows,
    SequentialWindows,
    load_text_chars,
    resolve_text_path,
)
from harness.data.text_lines import (
    PAD_INDEX,
    TextLines,
    TextLoader,
    Vocabulary,
    build_vocabulary,
    load_text_lines,
)

__all__ = [
    "BUNDLED",
    "DATASETS",
    "PAD_INDEX",
    "TENSOR_SPLITS",
    "AugmentParams",
    "BatchAugment",
    "CharText",
    "ClassSubset",
    "DatasetSpec",
    "EpochDataLoader",
    "EpochSampler",
    "FeatureStandardize",
    "FeatureTensors",
    "FolderSplits",
    "ImageTensors",
    "RandomWindows",
    "SequentialWindows",
    "TensorLoader",
    "TextLines",
    "TextLoader",
    "Uint8Normalize",
    "Vocabulary",
    "augment_transforms",
    "build_vocabulary",
    "dataset_spec",
    "dataset_targets",
    "default_num_workers",
    "epoch_generator",
    "epoch_permutation",
    "fixed_test_split",
    "load_bundled",
    "load_dataset",
    "load_image_folder",
    "load_text_chars",
    "load_text_lines",
    "make_dataloader",
    "random_subset",
    "resolve_data_root",
    "resolve_text_path",
    "select_classes",
    "shard_indices",
    "shard_size",
    "subset_classes",
    "train_val_split",
]
