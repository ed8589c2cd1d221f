"""The data of a recipe: the source `data.name` names, the seeded hold-out, and the loaders.

`load_data_source` reads the splits (built-in data sets, scikit-learn's bundled `sklearn:breast_cancer`
and `sklearn:digits`, `image_folder`, `text_lines`, `import:module:function`; `text_chars` has its own
loaders, `text_chars_data`) and
keeps `data.classes`; `build_data` holds out `data.val_size` (seeded by `trainer.seed`), subsamples
`data.train_size` and makes the loaders: a TensorLoader on the device for tensors, a TextLoader for
sentences (their vocabulary built from the sentences trained on, after every split), the DataLoader
path for datasets, this rank's shard under torchrun. `identify_test_split` says which samples a
recipe's test split holds, so that two recipes can be checked to score on the very same ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from harness.data import (
    BUNDLED,
    TENSOR_SPLITS,
    BatchAugment,
    FeatureTensors,
    ImageTensors,
    TensorLoader,
    TextLines,
    TextLoader,
    Vocabulary,
    augment_transforms,
    build_vocabulary,
    load_bundled,
    load_dataset,
    load_image_folder,
    load_text_lines,
    make_dataloader,
    random_subset,
    resolve_data_root,
    select_classes,
    subset_classes,
    train_val_split,
)
from harness.data.map_style import IMAGENET_MEAN, IMAGENET_STD
from harness.data.text_chars import TEXT_CHARS, RandomWindows, SequentialWindows, load_text_chars, resolve_text_path
from harness.data.text_lines import TEXT_LINES
from harness.errors import HarnessError
from harness.recipe.imports import import_object
from harness.recipe.schema import DataConfig

# The data.name values whose inputs are token ids of a vocabulary (`Data.vocabulary`): a model of them
# embeds the ids, and its embedding is sized from that vocabulary.
TOKEN_SOURCES = (TEXT_CHARS, TEXT_LINES)


@dataclass
class Data:
    """The loaders of a run, plus what the model and the reports need to know about the data."""

    train: Iterable[Any]
    val: Iterable[Any] | None
    test: Iterable[Any]
    classes: list[str]
    num_classes: int
    # Text: what the token ids mean, id i is vocabulary[i]. text_chars: the characters as one string (the
    # classes, joined); text_lines: the words, 0 <pad> and 1 <unk> first, built from the training sentences
    # of this run (of this fold, under cross-validation) only. None for other data. Checkpoints keep it
    # (`extra["vocabulary"]`) and every command that loads one checks it (`weights.check_vocabulary`).
    vocabulary: str | list[str] | None = None


@dataclass
class DataSource:
    """The splits `data.name` provides, `data.classes` applied, before any hold-out.

    A split is an `ImageTensors` or a `FeatureTensors` (the tensor path: TensorLoader, batch augmentation
    of images on the device), `TextLines` (sentences: TextLoader),
    a map-style dataset (the DataLoader path) or, from an import function, a ready loader (used as is).
    """

    train: Any
    test: Any
    val: Any  # a validation split of its own (image_folder's val/, an import function's "val"), or None
    holdout: Any  # the training samples with evaluation transforms: the `val_size` hold-out comes from here
    classes: list[str]
    collate_fn: Any = None  # the DataLoader path's, when not the default (image_folder normalises batches)


def load_data_source(cfg: DataConfig) -> DataSource:
    """Read `data.name` (built-in, bundled, `image_folder`, `text_lines` or `import:module:function`) and keep
    `data.classes`."""
    if cfg.name == TEXT_CHARS:
        raise HarnessError(f"data.name={TEXT_CHARS} has training and validation windows, not samples of classes: "
                           "this command needs a data set of samples")
    if cfg.name == "image_folder":
        source = _image_folder_source(cfg)
    elif cfg.name == TEXT_LINES:  # data.classes does not apply (the schema refuses it): the files are the classes
        assert cfg.files is not None  # the schema requires them
        train, test = load_text_lines(cfg.files, cfg.root, cfg.encoding)
        return DataSource(train, test, None, train, train.classes)
    elif cfg.name.startswith("import:"):
        source = _import_source(cfg)
    elif cfg.name in BUNDLED:  # inside scikit-learn: data.root and data.download do not apply
        train, test = (_with_stats(split, cfg) for split in load_bundled(cfg.name))
        source = DataSource(train, test, None, train, train.classes)
    else:

        full = _with_stats(load_dataset(cfg.name, cfg.root, train=True, download=cfg.download), cfg)
        test = _with_stats(load_dataset(cfg.name, cfg.root, train=False, download=cfg.download), cfg)
        source = DataSource(full, test, None, full, full.classes)
    if cfg.classes is None:
        return source

    def keep(split: Any) -> Any:

        if split is None:
            return None
        if isinstance(split, TENSOR_SPLITS):
            return subset_classes(split, cfg.classes)
        if is_loader(split):
            raise HarnessError(f"data.classes: {cfg.name} gave a loader; class subsets need datasets")
        return select_classes(split, cfg.classes, source.classes)

    train = keep(source.train)
    return DataSource(train, keep(source.test), keep(source.val),
                      train if source.holdout is source.train else keep(source.holdout),
                      [source.classes[c] for c in cfg.classes], source.collate_fn)


@dataclass(frozen=True)
class SplitIdentity:
    """Which samples a split holds, as the model sees them: two equal identities score on the same samples."""

    size: int  # samples
    classes: tuple[str, ...]  # class names, in label order
    fingerprint: str  # sha256 of the inputs (as stored, with the normalisation applied to them) and labels, in order
    unit: str = "images"  # what a sample is, for messages

    def describe(self) -> str:
        names = ", ".join(self.classes[:3]) + (", ..." if len(self.classes) > 3 else "")
        return f"{self.size} {self.unit} of {len(self.classes)} classes ({names})"


# The data keys that decide the test split (the others shape training only).
TEST_SPLIT_KEYS = ("name", "root", "classes", "image_size", "mean", "std")


def identify_test_split(cfg: DataConfig) -> SplitIdentity:
    """The identity of the test split `cfg` gives: its size, class names and a fingerprint of every
    input and label. Tensors are hashed as stored plus their mean / std; sentences as their words (the
    ids a model sees depend on its training split's vocabulary, the sentences do not); a dataset is read once."""
    source = load_data_source(cfg)
    split, digest, size = source.test, hashlib.sha256(), 0
    if isinstance(split, TextLines):
        return SplitIdentity(len(split), tuple(source.classes), split.fingerprint(), unit="sentences")
    if isinstance(split, TENSOR_SPLITS):
        digest.update(repr((tuple(split.inputs.shape), split.mean, split.std)).encode())
        digest.update(split.inputs.cpu().contiguous().numpy().tobytes())
        digest.update(split.targets.cpu().to(torch.int64).numpy().tobytes())
        size = len(split)
    else:
        batches = split if is_loader(split) else torch.utils.data.DataLoader(
            split, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=source.collate_fn)
        for inputs, targets, *_ in batches:
            digest.update(inputs.cpu().contiguous().numpy().tobytes())
            digest.update(torch.as_tensor(targets).cpu().to(torch.int64).numpy().tobytes())
            size += len(targets)
    return SplitIdentity(size, tuple(source.classes), digest.hexdigest())


def check_same_test_split(splits: Sequence[tuple[str, DataConfig, SplitIdentity]]) -> None:
    """Refuse (one line) when the named test splits are not the same samples: every one against the first.

    `splits` holds (name, data config, identity) per model; the line names the two models, how the
    splits differ and which data keys differ between them."""
    first_name, first_cfg, first = splits[0]
    for name, cfg, split in splits[1:]:
        if split == first:
            continue
        if (split.size, split.classes) != (first.size, first.classes):
            how = f"{first.describe()} vs {split.describe()}"
        else:
            how = f"{split.describe()} each, but other inputs or labels"
        keys = [f"data.{k}={getattr(first_cfg, k)!r} vs {getattr(cfg, k)!r}" for k in TEST_SPLIT_KEYS
                if getattr(first_cfg, k) != getattr(cfg, k)]
        raise HarnessError(f"{first_name} and {name} would be scored on different test splits ({how}"
                           f"{'; ' + ', '.join(keys) if keys else ''}); models in one comparison are scored on "
                           "the same test samples: give them the same data.name, root, classes and "
                           "normalisation, e.g. with --set")


def build_data(cfg: DataConfig, device: torch.device, seed: int, *, overfit_batches: int = 0,
               channels_last: bool = False, rank: int = 0, world_size: int = 1,
               indices: tuple[torch.Tensor, torch.Tensor] | None = None) -> Data:
    """The loaders of a recipe's data: `load_data_source`, then a seeded validation hold-out of
    `data.val_size` (unless the source has its own val split), a seeded `data.train_size` subset,
    and loaders: TensorLoader for tensors (augmenting training batches on the device), TextLoader for
    sentences, the DataLoader path for datasets.

    Sentences are encoded with a vocabulary (`Data.vocabulary`) built from the training sentences alone,
    after the hold-out, the fold and the `data.train_size` subset are drawn: validation, held-out and
    test words the training sentences lack are <unk>.

    `indices`: explicit `(train_idx, val_idx)` into the training split instead of the `val_size`
    hold-out (cross-validation folds)."""
    if cfg.name == TEXT_CHARS:
        if overfit_batches or indices is not None:
            raise HarnessError(f"data.name={TEXT_CHARS}: trainer.overfit_batches and cross-validation need samples; "
                               "this source draws windows of one text")
        return text_chars_data(cfg, device, seed, rank=rank, world_size=world_size)

    source = load_data_source(cfg)
    augment = _batch_augment(cfg, source.train)
    vocabulary: Vocabulary | None = None  # sentences: set from the training sentences before any loader is made

    def loader(split: Any, batch_size: int, shuffle: bool, augment: Any = None) -> Any:
        if isinstance(split, TextLines):
            assert vocabulary is not None, "the vocabulary comes first, from the training sentences"
            return TextLoader(vocabulary.encode(split), split.offsets, split.targets, batch_size, shuffle=shuffle,
                              seed=seed, device=device, rank=rank, world_size=world_size)
        if isinstance(split, TENSOR_SPLITS):
            return TensorLoader(split.inputs, split.targets, batch_size, mean=split.mean, std=split.std,
                                shuffle=shuffle, seed=seed, device=device, channels_last=channels_last,
                                rank=rank, world_size=world_size, augment=augment)
        if is_loader(split):
            return split
        return make_dataloader(split, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                               num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                               persistent_workers=cfg.persistent_workers, collate_fn=source.collate_fn,
                               device=device)

    classes = source.classes
    # A split with no samples would report accuracy 0.0 of nothing (and pick best.pt on it): refuse.
    for split_name, split in (("training", source.train), ("test", source.test), ("validation", source.val)):
        if split is not None and not is_loader(split) and len(split) == 0:
            subset = f" after data.classes={cfg.classes}" if cfg.classes is not None else ""
            raise HarnessError(f"data.name={cfg.name}: the {split_name} split has no samples{subset}")

    def finish(train: Any, val: Any) -> Data:
        # The test loader last: sentences are encoded with the vocabulary of what `train` holds.
        test = loader(source.test, cfg.eval_batch_size, shuffle=False)
        words = None if vocabulary is None else list(vocabulary.words)
        return Data(train, val, test, classes, len(classes), vocabulary=words)

    if is_loader(source.train):  # an import function's own loaders: nothing to split or subsample
        if overfit_batches or indices is not None or cfg.train_size is not None:
            raise HarnessError(f"{cfg.name} gave a training loader: trainer.overfit_batches, data.train_size "
                               "and cross-validation need a dataset")
        if source.val is None and cfg.val_size:
            raise HarnessError(f"data.val_size={cfg.val_size}: {cfg.name} gave a training loader, nothing can be "
                               "held out of it; return a 'val' split too, or set data.val_size=0")
        val = None if source.val is None else loader(source.val, cfg.eval_batch_size, shuffle=False)
        return finish(source.train, val)

    n = len(source.train)
    if overfit_batches:
        # Train and validate on the same few fixed batches (not augmented): a model that cannot fit them has a bug.
        head = _take(source.holdout, torch.arange(min(n, overfit_batches * cfg.batch_size)))
        if isinstance(head, TextLines):
            vocabulary = build_vocabulary(head, cfg.min_freq)
        same = loader(head, cfg.batch_size, shuffle=False)
        return finish(same, same)
    own_val = indices is None and source.val is not None  # data.val_size is then not used
    if indices is not None:
        train_idx, val_idx = indices
    elif own_val:
        train_idx, val_idx = torch.arange(n), torch.arange(0)
    else:
        if cfg.val_size >= n:
            raise HarnessError(f"data.val_size={cfg.val_size} must be smaller than the {n} training images")
        train_idx, val_idx = train_val_split(n, cfg.val_size, seed)
    if cfg.train_size is not None:
        if cfg.train_size > len(train_idx):
            raise HarnessError(f"data.train_size={cfg.train_size} is more than the {len(train_idx)} training "
                               "images left after the validation hold-out")
        train_idx = train_idx[random_subset(len(train_idx), cfg.train_size, seed)]
    everything = len(train_idx) == n  # all of it (the indices are sorted): use it as is, no copy
    train_split = source.train if everything else _take(source.train, train_idx)
    if isinstance(train_split, TextLines):  # after every split: held-out sentences never shape the vocabulary
        vocabulary = build_vocabulary(train_split, cfg.min_freq)
    if own_val:
        val = loader(source.val, cfg.eval_batch_size, shuffle=False)
    else:
        val = loader(_take(source.holdout, val_idx), cfg.eval_batch_size, shuffle=False) if len(val_idx) else None
    return finish(loader(train_split, cfg.batch_size, shuffle=True, augment=augment), val)


def is_loader(split: Any) -> bool:
    """A ready loader (a DataLoader, or an iterable without __getitem__), not a dataset."""
    return isinstance(split, torch.utils.data.DataLoader) or not hasattr(split, "__getitem__")


def _take(split: Any, index: torch.Tensor) -> Any:

    if isinstance(split, (*TENSOR_SPLITS, TextLines)):
        return split.take(index)
    return torch.utils.data.Subset(split, index.tolist())


def _with_stats(split: Any, cfg: DataConfig) -> Any:
    """`split` with `data.mean` / `data.std` when the recipe sets them."""

    if cfg.mean is not None and isinstance(split, FeatureTensors):
        raise HarnessError(f"data.mean / data.std are per image channel; {cfg.name} gives feature vectors, "
                           "standardised with their training split's statistics: leave data.mean and data.std unset")
    if cfg.mean is None or cfg.std is None or not isinstance(split, ImageTensors):
        return split
    channels = split.images.shape[1]
    if len(cfg.mean) != channels or len(cfg.std) != channels:
        raise HarnessError(f"data.mean / data.std: {channels} values needed (one per channel), "
                           f"got {len(cfg.mean)} / {len(cfg.std)}")
    return replace(split, mean=tuple(cfg.mean), std=tuple(cfg.std))


def _batch_augment(cfg: DataConfig, train: Any) -> Any:
    """The BatchAugment of `data.augment` for a tensor training split; None when off or not tensors."""

    if cfg.augment is None:
        return None
    if isinstance(train, FeatureTensors):
        raise HarnessError(f"data.augment crops and flips images; {cfg.name} gives feature vectors: "
                           "leave data.augment unset")
    if not isinstance(train, ImageTensors):
        if cfg.name != "image_folder":  # image_folder put the same ops in its transforms
            raise HarnessError(f"data.augment: {cfg.name} gave datasets, not tensors; put the augmentation "
                               "in its transforms")
        return None
    crop = cfg.augment.random_crop
    height, width = train.images.shape[-2:]
    if crop is not None and not crop.size == height == width:
        raise HarnessError(f"data.augment.random_crop.size={crop.size} must equal the {height}x{width} image size: "
                           "validation images are not cropped (shift the crop with padding)")
    return BatchAugment(crop.size if crop else None, crop.padding if crop else 0, cfg.augment.horizontal_flip)


def _image_folder_source(cfg: DataConfig) -> DataSource:

    transforms = []
    if cfg.augment is not None:
        crop = cfg.augment.random_crop
        if crop is not None and crop.size != cfg.image_size:
            raise HarnessError(f"data.augment.random_crop.size={crop.size} must equal data.image_size="
                               f"{cfg.image_size}: validation images are not cropped (shift the crop with padding)")
        transforms = augment_transforms(crop.size if crop else None, crop.padding if crop else 0,
                                        cfg.augment.horizontal_flip)
    splits = load_image_folder(resolve_data_root(cfg.root), cfg.image_size, cfg.mean or IMAGENET_MEAN,
                               cfg.std or IMAGENET_STD, transforms)
    return DataSource(splits.train, splits.test, splits.val, splits.train_eval, splits.classes, splits.collate_fn)


IMPORT_KEYS = ("train", "test", "val", "classes")


def _import_source(cfg: DataConfig) -> DataSource:
    """`import:package.module:function`: `function(cfg)` returns {"train", "test", optional "val", "classes"}."""
    function = import_object(cfg.name.removeprefix("import:"), f"data.name {cfg.name!r}")
    result = function(cfg)
    shape = "a dict with 'train' and 'test' (datasets, ImageTensors or loaders), optional 'val' and 'classes'"
    if not isinstance(result, dict) or "train" not in result or "test" not in result:
        got = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise HarnessError(f"data.name {cfg.name!r}: the function must return {shape}; got {got}")
    unknown = sorted(set(result) - set(IMPORT_KEYS))
    if unknown:
        raise HarnessError(f"data.name {cfg.name!r}: unknown keys {unknown} in what it returned; allowed: "
                           f"{', '.join(IMPORT_KEYS)}")
    train, test, val = (_with_stats(result.get(k), cfg) for k in ("train", "test", "val"))
    classes = result.get("classes") or getattr(train, "classes", None)
    if not classes:
        raise HarnessError(f"data.name {cfg.name!r}: say the class names: return 'classes' too, or give the "
                           "training split a `classes` attribute")
    return DataSource(train, test, val, train, list(classes))


def text_chars_data(cfg: DataConfig, device: torch.device, seed: int, *, rank: int = 0, world_size: int = 1) -> Data:
    """`data.name: text_chars`: `data.path` read as characters, nanoGPT's split (the first 90 % of the
    text trains, the last 10 % validates). Training draws `data.batch_size` random windows of
    `data.block_size` per step (seeded by `trainer.seed`); validation batches are `data.eval_batch_size`
    consecutive windows of the validation text. There is no test split: the test pass at the end of a
    run scores the whole validation split. The classes are the characters: the vocabulary."""
    text = load_text_chars(resolve_text_path(cfg.path or "", cfg.root), cfg.encoding)
    train_ids, val_ids = text.split()
    assert cfg.block_size is not None  # the schema requires it for text_chars
    train = RandomWindows(train_ids, cfg.block_size, cfg.batch_size, seed=seed, device=device, rank=rank,
                          world_size=world_size)
    val = SequentialWindows(val_ids, cfg.block_size, cfg.eval_batch_size, device=device, rank=rank,
                            world_size=world_size)
    return Data(train, val, val, list(text.vocabulary), len(text.vocabulary), vocabulary=text.vocabulary)
