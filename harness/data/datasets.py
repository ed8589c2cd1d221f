"""Classification datasets, decoded once into tensors: uint8 images, or float feature vectors.

torchvision's own dataset classes read the standard on-disk layouts; we keep only their decoded
`.data` / `.targets` arrays, so no PIL image and no per-sample transform runs during training.
torchvision is imported inside `load_dataset`, so `import harness` does not pay for it.

    data = load_dataset("mnist", root=None, train=True)  # root: HARNESS_DATA_DIR, else ./data
    data.images.shape, data.images.dtype                  # (60000, 1, 28, 28), torch.uint8
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, TypeVar

import torch

from harness.errors import HarnessError

# Seconds one socket operation may block while downloading. torchvision's urlopen has no timeout,
# so behind a firewall that drops packets a download would hang for minutes before failing.
DOWNLOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset needs on disk and the constants to normalise it with."""

    title: str  # how messages name it
    torchvision_class: str  # class in torchvision.datasets that reads it
    folder: str  # where the files must be, relative to the data root
    files: tuple[str, ...]  # every file torchvision insists on, for either split
    gz_ok: bool  # whether `<file>.gz` may stand in for `<file>` (IDX files)
    mean: tuple[float, ...]  # per channel, pixels on the [0, 1] scale, training split
    std: tuple[float, ...]


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("MNIST", "MNIST", "MNIST/raw", _IDX_FILES, True, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetSpec(
        "Fashion-MNIST", "FashionMNIST", "FashionMNIST/raw", _IDX_FILES, True, (0.2860,), (0.3530,)
    ),
    # std is the true per-pixel std; the (0.2023, 0.1994, 0.2010) seen in many repos is not.
    "cifar10": DatasetSpec(
        "CIFAR-10",
        "CIFAR10",
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        False,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
}


Split = TypeVar("Split", bound="_SplitInMemory")


class _SplitInMemory:
    """What both in-memory split types share: `inputs` (one row per sample) and `targets`, the class
    names, per-input normalisation stats; map-style indexing and `take`."""

    inputs_field: ClassVar[str]  # the dataclass field holding the inputs
    targets: torch.Tensor
    classes: list[str]

    @property
    def inputs(self) -> torch.Tensor:
        """What a loader batches: the images or the feature vectors."""
        return getattr(self, self.inputs_field)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def take(self: Split, index: torch.Tensor) -> Split:
        """The samples at `index` (e.g. one side of `train_val_split`), same classes and stats."""
        return replace(self, **{self.inputs_field: self.inputs[index]}, targets=self.targets[index],
                       classes=list(self.classes))


@dataclass(eq=False)
class ImageTensors(_SplitInMemory):
    """A whole image classification split in memory.

    `images` is uint8 (N, C, H, W) exactly as stored on disk; `targets` is int64 (N,).
    `mean` / `std` are per channel on the [0, 1] scale, ready for `TensorLoader`.
    Indexing gives `(image, target)`, so it also works as a map-style dataset.
    """

    inputs_field: ClassVar[str] = "images"
    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(eq=False)
class FeatureTensors(_SplitInMemory):
    """A whole tabular classification split in memory: one feature vector per sample, not an image.

    `features` is float32 (N, F), the values as the source gives them (not standardised); `targets`
    is int64 (N,). `mean` / `std` are per feature, ready for `TensorLoader`, which standardises each
    batch as `(x - mean) / std`. Indexing gives `(features, target)`, so it also works as a map-style
    dataset.
    """

    inputs_field: ClassVar[str] = "features"
    features: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


# The split types of the tensor path (TensorLoader): anything else goes through a DataLoader.
TENSOR_SPLITS = (ImageTensors, FeatureTensors)


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The data root to use: `root` if given, else env `HARNESS_DATA_DIR`, else `./data` (absolute)."""
    if root is None or str(root) == "":
        root = os.environ.get("HARNESS_DATA_DIR") or "data"
    return Path(os.path.abspath(os.path.expanduser(root)))


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name`; an unknown name is a `HarnessError` listing the choices."""
    if name not in DATASETS:
        raise HarnessError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, root: str | os.PathLike | None, train: bool, download: bool = True) -> ImageTensors:
    """Load the train or test split of dataset `name` from `root` into tensors.

    Looks for the files first; only if some are missing and `download` is true does it ask
    torchvision to download them (into a temporary folder that is moved into place on success
    and deleted on failure, so a failed attempt leaves nothing behind). Missing data that cannot
    be downloaded is a one-line `HarnessError` naming the folder and the files to put there.
    """
    spec = dataset_spec(name)
    root = resolve_data_root(root)
    folder = root / spec.folder
    if not _has_files(spec, folder):
        if not download:
            raise HarnessError(_not_found(spec, folder, "and download is off"))
        _download(spec, root)
    if spec.gz_ok:
        _gunzip_missing(folder, spec.files)

    try:
        ds = _torchvision_class(spec.torchvision_class)(str(root), train=train, download=False)
    except Exception as e:  # truncated or foreign files: asserts, ValueError, unpickling errors...
        raise HarnessError(
            f"{spec.title} files in {folder} could not be read ({_one_line(e)}): "
            f"replace {', '.join(spec.files)} with the original files"
        ) from e

    images = torch.as_tensor(ds.data)
    if images.ndim == 3:  # MNIST-style (N, H, W) grey
        images = images.unsqueeze(1)
    else:  # CIFAR-style (N, H, W, C) numpy
        images = images.permute(0, 3, 1, 2)
    return ImageTensors(
        images=images.contiguous(),
        targets=torch.as_tensor(ds.targets, dtype=torch.int64),
        classes=list(ds.classes),
        mean=spec.mean,
        std=spec.std,
    )


def subset_classes(data: ImageTensors | FeatureTensors, classes: list[int]) -> ImageTensors | FeatureTensors:
    """Keep only the samples of `classes`, relabelled 0..k-1 in the order given.

    `subset_classes(cifar, [3, 5])` gives a cat-vs-dog set where cat is 0 and dog is 1.
    mean/std stay those of the full dataset, as a model pretrained on it expects.
    """
    if not classes or len(set(classes)) != len(classes):
        raise HarnessError(f"classes must be a non-empty list without repeats, got {classes}")
    bad = [c for c in classes if not 0 <= c < data.num_classes]
    if bad:
        raise HarnessError(f"classes {bad} out of range: this dataset has classes 0..{data.num_classes - 1}")
    # lookup table old label -> new label, -1 for dropped classes
    relabel = torch.full((data.num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    new_targets = relabel[data.targets]
    keep = torch.nonzero(new_targets >= 0).flatten()
    return replace(data.take(keep), targets=new_targets[keep], classes=[data.classes[c] for c in classes])


def _has_files(spec: DatasetSpec, folder: Path) -> bool:
    return all(
        (folder / f).is_file() or (spec.gz_ok and (folder / f"{f}.gz").is_file()) for f in spec.files
    )


def _not_found(spec: DatasetSpec, folder: Path, why: str) -> str:
    files = ", ".join(spec.files) + (" (or their .gz)" if spec.gz_ok else "")
    return f"{spec.title} not found in {folder} {why}: put {files} there, or set data.root / HARNESS_DATA_DIR"


def _one_line(e: BaseException) -> str:
    """`Type: last line of the message`; torchvision's download errors span several lines."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1][:200]}" if lines else type(e).__name__


@functools.cache
def _torchvision_class(class_name: str) -> type:
    import torchvision.datasets as tvd  # noqa: PLC0415  (not at the top: `import harness` must stay fast)

    base = getattr(tvd, class_name)
    if class_name != "CIFAR10":
        return base

    class CIFAR10(base):
        """torchvision's CIFAR10, checking that the batch files exist rather than their md5.

        torchvision md5-hashes all ~180 MB on every load and rejects any file but the official
        ones, yet only checks that MNIST's raw files exist. We treat CIFAR-10 the same way:
        a foreign or truncated file still fails, when unpickling or reshaping. The download
        archive keeps its md5 check (`tgz_md5` is inherited).
        """

        train_list: ClassVar = [[name, None] for name, _ in base.train_list]
        test_list: ClassVar = [[name, None] for name, _ in base.test_list]
        meta: ClassVar = {**base.meta, "md5": None}

    return CIFAR10


def _download(spec: DatasetSpec, root: Path) -> None:
    """Download with torchvision into a temporary folder under `root`, then move the files in.

    Whatever happens (no network, a reset connection, Ctrl-C) the temporary folder is removed,
    so no half-written file is ever seen by the next attempt.
    """
    folder = root / spec.folder
    created = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
    tmp = None
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                _torchvision_class(spec.torchvision_class)(str(tmp), train=True, download=True)
        except Exception as e:
            why = f"and could not be downloaded ({_one_line(e)})"
            raise HarnessError(_not_found(spec, folder, why)) from e
        folder.mkdir(parents=True, exist_ok=True)
        for f in (tmp / spec.folder).iterdir():  # same filesystem: each move is an atomic rename
            os.replace(f, folder / f.name)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # folders made for a download that failed; rmdir only removes empty ones
            with contextlib.suppress(OSError):
                p.rmdir()


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _gunzip_missing(folder: Path, files: tuple[str, ...]) -> None:
    """Decompress `<file>.gz` where only it is present: torchvision reads uncompressed IDX only.

    It is what torchvision's own download does; we write to a temporary name and rename, so an
    interrupted run never leaves a truncated file that looks complete.
    """
    for name in files:
        target, packed = folder / name, folder / f"{name}.gz"
        if target.is_file() or not packed.is_file():
            continue
        tmp = folder / f".{name}.partial"
        try:
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(tmp, target)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            tmp.unlink(missing_ok=True)
            raise HarnessError(f"cannot decompress {packed} into {target} ({_one_line(e)})") from e
