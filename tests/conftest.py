"""Shared fixtures.

`fake_data` writes tiny datasets in the exact on-disk formats torchvision reads (IDX for MNIST
and Fashion-MNIST, Python pickles for CIFAR-10), so tests run the real loaders with no real data
and no network.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

Arrays = dict[bool, tuple[np.ndarray, np.ndarray]]  # train? -> (uint8 (N, C, H, W), int64 (N,))


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> None:
    """Write a uint8 array as an IDX file (to `path.gz`, gzipped, if `gz`).

    Header: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, then each
    dimension as a big-endian uint32; then the raw bytes, row-major.
    """
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_fake_mnist(
    root: Path, folder: str = "MNIST", *, n_train: int = 40, n_test: int = 20, raw: bool = True,
    gz: bool = False, seed: int = 0,
) -> Arrays:
    """Write `root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` like torchvision's MNIST."""
    rng = np.random.default_rng(seed)
    raw_dir = root / folder / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    arrays: Arrays = {}
    for train, prefix, n in ((True, "train", n_train), (False, "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)  # every class present
        for packed in [False] * raw + [True] * gz:
            write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", images, gz=packed)
            write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", labels, gz=packed)
        arrays[train] = (images[:, None], labels.astype(np.int64))
    return arrays


def write_learnable_mnist(root: Path, n_train: int = 400, n_test: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-format IDX files: image = 0.4 * its class template + 0.6 * noise; test labels unbalanced."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (10, 28, 28))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n, weights in (("train", n_train, np.ones(10)), ("t10k", n_test, np.arange(1.0, 11.0))):
        labels = rng.choice(10, size=n, p=weights / weights.sum()).astype(np.uint8)
        images = (0.4 * templates[labels] + 0.6 * rng.integers(0, 256, (n, 28, 28))).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels.astype(np.int64))
    return {"test_images": arrays["t10k"][0], "test_labels": arrays["t10k"][1]}


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar10(root: Path, *, n_per_batch: int = 6, n_test: int = 10, seed: int = 0) -> Arrays:
    """Write `root/cifar-10-batches-py/` like the official archive.

    Each batch is a pickled dict whose "data" is uint8 (n, 3072): per image 1024 red, then 1024
    green, then 1024 blue bytes, row-major, i.e. (C, H, W) flattened; "labels" is a list of ints.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        entry = {
            "batch_label": name,
            "labels": [int(v) for v in labels],
            "data": images.reshape(n, 3072),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        return images, labels.astype(np.int64)

    parts = [batch(f"data_batch_{i}", n_per_batch) for i in range(1, 6)]
    meta = {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": n_per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        True: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
        False: batch("test_batch", n_test),
    }


@dataclass
class FakeData:
    root: Path  # pass as the data root: load_dataset(name, fake_data.root, train)
    arrays: dict[str, Arrays]  # dataset name -> train? -> (images NCHW uint8, targets int64)


@pytest.fixture
def fake_data(tmp_path: Path) -> FakeData:
    """mnist (uncompressed IDX), fashion_mnist (.gz only) and cifar10 (pickles) under one root."""
    root = tmp_path / "data"
    return FakeData(
        root=root,
        arrays={
            "mnist": write_fake_mnist(root, "MNIST", seed=0),
            "fashion_mnist": write_fake_mnist(root, "FashionMNIST", raw=False, gz=True, seed=1),
            "cifar10": write_fake_cifar10(root, seed=2),
        },
    )


REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """The real MNIST for end-to-end tests: $HARNESS_DATA_DIR, else ../shared/data beside the repo."""
    import os

    for candidate in (os.environ.get("HARNESS_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they thrash.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MISSING_MNIST = "real MNIST not found ($HARNESS_DATA_DIR, ../shared/data)"


def need_real_data() -> Path:
    """The real MNIST folder, or skip the test, or, on CI (`CI` set) where ../shared/data exists
    beside the repo but holds no MNIST, fail it: there a missing data set is a broken machine, and a
    skip would quietly drop the end-to-end tests from the run."""
    import os

    found = real_data_dir()
    if found is not None:
        return found
    if os.environ.get("CI") and (REPO.parent / "shared" / "data").is_dir():
        pytest.fail(f"{MISSING_MNIST}, and CI is set with ../shared/data present", pytrace=False)
    pytest.skip(MISSING_MNIST)


# Marks a test that trains or reads the real MNIST: skipped without it, failed on CI (need_real_data).
requires_mnist = pytest.mark.requires_mnist

MR_FILES = ("rt-polaritydata/rt-polarity.neg", "rt-polaritydata/rt-polarity.pos")
MISSING_MR = "real MR (rt-polaritydata) not found ($HARNESS_DATA_DIR, ../shared/data)"


def need_real_mr() -> Path:
    """The data root holding Pang & Lee's MR files, or skip the test; on CI with ../shared/data present, fail
    it (as need_real_data does for MNIST)."""
    import os

    for candidate in (os.environ.get("HARNESS_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and all((Path(candidate) / f).is_file() for f in MR_FILES):
            return Path(candidate)
    if os.environ.get("CI") and (REPO.parent / "shared" / "data").is_dir():
        pytest.fail(f"{MISSING_MR}, and CI is set with ../shared/data present", pytrace=False)
    pytest.skip(MISSING_MR)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_mnist: needs the real MNIST (skips, or fails on CI, without it)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_mnist") is not None:
        need_real_data()


def best_pt_test_accuracy(run_dir: Path, data_root: Path) -> tuple[int, int]:
    """(correct, total) of a run folder's best.pt on its recipe's test split, counted here from the
    model's argmax over the test loader's images: no Trainer, no metric objects."""
    import torch

    from harness.core.checkpoint import read_checkpoint
    from harness.recipe.build import build_model
    from harness.recipe.data import build_data
    from harness.recipe.schema import load_recipe

    recipe = load_recipe(run_dir / "config.yaml", [f"data.root={data_root}"])
    model = build_model(recipe.model)
    model.load_state_dict(read_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, target in build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed).test:
            correct += int((model(images).argmax(1) == target).sum())
            total += len(target)
    return correct, total


def hparams_row(run_dir: Path) -> tuple[dict[str, object], list[str], set[str]]:
    """A run folder's HParams row as TensorBoard's own reader gives it: (its hparams, the tags of its
    metrics, every scalar tag the run logged), so a test can check that each metric names a scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = {tag: plugin_data_pb2.HParamsPluginData.FromString(data)
               for tag, data in events.PluginTagToContent("hparams").items()}
    info = content["_hparams_/session_start_info"].session_start_info
    hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in info.hparams.items()}
    metrics = [m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos]
    return hparams, metrics, set(events.Tags()["scalars"])


# Latin-1 words that trip text handling: é and ï (not valid UTF-8 as single bytes), 0x85 (U+0085 NEXT
# LINE: str.splitlines() breaks a line there) and 0xa0 (no-break space: str.split() breaks a word there).
LATIN1_WORDS = ["café", "naïve", "wait\x85", "non\xa0stop", "déjà"]


def fake_mr_sentences(n_per_class: int = 60, seed: int = 0) -> dict[str, list[list[str]]]:
    """Sentences of two classes: positive ones hold a positive cue word, negative ones a negative one, both
    hold fillers (Latin-1 words among them) and a word of their own (`w<class><i>`, seen nowhere else).
    Lengths 1 to 12 words: some shorter than every filter of a text CNN."""
    import random

    rng = random.Random(seed)
    fillers = ["the", "a", "film", "movie", "is", "and", "it", "story", ",", ".", *LATIN1_WORDS]
    cues = {"neg": ["bad", "dull", "awful"], "pos": ["good", "fine", "great"]}
    out: dict[str, list[list[str]]] = {}
    for label, words in cues.items():
        sentences = []
        for i in range(n_per_class):
            length = 1 + i % 12
            sentence = [rng.choice(fillers) for _ in range(length)]
            sentence[rng.randrange(length)] = rng.choice(words)
            if length > 1:
                sentence[rng.randrange(length)] = f"w{label}{i}"
            sentences.append(sentence)
        out[label] = sentences
    return out


def write_fake_mr(root: Path, n_per_class: int = 60, seed: int = 0) -> dict[str, list[list[str]]]:
    """`root/rt-polaritydata/rt-polarity.{neg,pos}` as MR lays them out: one sentence a line, words joined by
    spaces, Latin-1 bytes, a final newline. Returns the sentences written, per class."""
    sentences = fake_mr_sentences(n_per_class, seed)
    folder = root / "rt-polaritydata"
    folder.mkdir(parents=True, exist_ok=True)
    for label, lines in sentences.items():
        (folder / f"rt-polarity.{label}").write_bytes("".join(" ".join(s) + "\n" for s in lines).encode("latin-1"))
    return sentences
