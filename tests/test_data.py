"""harness.data: dataset loading through torchvision's real readers, splits, both batch paths."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CIFAR10_CLASSES, REPO, real_data_dir, requires_mnist, write_fake_mnist
from torch.utils.data import TensorDataset

import harness.data.datasets as datasets_module
from harness.data import (
    DATASETS,
    TensorLoader,
    Uint8Normalize,
    epoch_permutation,
    load_dataset,
    make_dataloader,
    resolve_data_root,
    shard_indices,
    subset_classes,
    train_val_split,
)
from harness.errors import HarnessError

NAMES = ["mnist", "fashion_mnist", "cifar10"]


# ---------------------------------------------------------------- datasets


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_load_fake_dataset_gives_exact_pixels_and_labels(fake_data, name, train):
    data = load_dataset(name, fake_data.root, train, download=False)
    images, targets = fake_data.arrays[name][train]
    assert data.images.dtype == torch.uint8 and data.images.is_contiguous()
    assert data.targets.dtype == torch.int64
    assert torch.equal(data.images, torch.from_numpy(images))  # NCHW, CIFAR's NHWC converted back
    assert torch.equal(data.targets, torch.from_numpy(targets))
    assert len(data) == len(targets) and data.num_classes == 10
    assert (data.mean, data.std) == (DATASETS[name].mean, DATASETS[name].std)


def test_published_normalisation_constants():
    assert (DATASETS["mnist"].mean, DATASETS["mnist"].std) == ((0.1307,), (0.3081,))
    assert (DATASETS["fashion_mnist"].mean, DATASETS["fashion_mnist"].std) == ((0.2860,), (0.3530,))
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar10"].std == (0.2470, 0.2435, 0.2616)


def test_cifar10_class_names_come_from_batches_meta(fake_data):
    assert load_dataset("cifar10", fake_data.root, False, download=False).classes == CIFAR10_CLASSES


def test_gz_only_idx_files_are_decompressed_once(fake_data):
    raw = fake_data.root / "FashionMNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte").exists()
    load_dataset("fashion_mnist", fake_data.root, True, download=False)
    assert (raw / "train-images-idx3-ubyte").is_file()
    assert sorted(p.name for p in raw.iterdir() if p.name.startswith(".")) == []  # no temporary files
    os.remove(raw / "train-images-idx3-ubyte.gz")  # now read from the decompressed file
    data = load_dataset("fashion_mnist", fake_data.root, True, download=False)
    assert torch.equal(data.images, torch.from_numpy(fake_data.arrays["fashion_mnist"][True][0]))


def test_corrupt_gz_is_a_clear_error_and_leaves_nothing(fake_data):
    raw = fake_data.root / "FashionMNIST" / "raw"
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(HarnessError, match=r"cannot decompress .*t10k-images-idx3-ubyte\.gz"):
        load_dataset("fashion_mnist", fake_data.root, False, download=False)
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert not any(p.name.endswith(".partial") for p in raw.iterdir())


def test_truncated_cifar_batch_is_a_clear_error(fake_data):
    batch = fake_data.root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(HarnessError, match="could not be read") as info:
        load_dataset("cifar10", fake_data.root, True, download=False)
    assert "\n" not in str(info.value)


def test_unknown_dataset_lists_choices():
    with pytest.raises(HarnessError, match="unknown dataset 'imagenet': choose one of mnist, fashion_mnist, cifar10"):
        load_dataset("imagenet", "/nonexistent", True)


def _assert_names_folder_and_files(message: str, name: str, root: Path) -> None:
    spec = DATASETS[name]
    assert "\n" not in message
    assert message.startswith(f"{spec.title} not found in {root / spec.folder} ")
    for f in spec.files:
        assert f in message
    assert "HARNESS_DATA_DIR" in message


@pytest.mark.parametrize("name", NAMES)
def test_missing_data_without_download_fails_at_once(tmp_path, name):
    root = tmp_path / "nothing-here"
    with pytest.raises(HarnessError, match="and download is off") as info:
        load_dataset(name, root, True, download=False)
    _assert_names_folder_and_files(str(info.value), name, root)
    assert not root.exists()  # looking creates nothing


@pytest.fixture
def unreachable_mirrors(monkeypatch):
    """Point every download URL at a closed local port: offline, whatever this machine's network."""
    import torchvision.datasets as tvd

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: connections are refused at once
    url = f"http://127.0.0.1:{port}/"
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url, url])
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.CIFAR10, "url", url + "cifar-10-python.tar.gz")
    return url


@pytest.mark.parametrize("name", NAMES)
def test_offline_download_fails_and_leaves_nothing(tmp_path, unreachable_mirrors, name):
    root = tmp_path / "data"
    root.mkdir()
    (root / "unrelated.txt").write_text("keep me")
    with pytest.raises(HarnessError, match="and could not be downloaded") as info:
        load_dataset(name, root, True, download=True)
    _assert_names_folder_and_files(str(info.value), name, root)
    assert [p.name for p in root.iterdir()] == ["unrelated.txt"]


def test_offline_download_removes_the_root_it_created(tmp_path, unreachable_mirrors):
    root = tmp_path / "a" / "b"
    with pytest.raises(HarnessError):
        load_dataset("mnist", root, True)
    assert list(tmp_path.iterdir()) == []


def test_download_cut_midway_leaves_no_half_written_file(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def cut_after_some_bytes(url, filename, chunk_size=0):
        Path(filename).write_bytes(b"\x1f\x8b half a file")
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(tv_utils, "_urlretrieve", cut_after_some_bytes)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(HarnessError, match=r"could not be downloaded .*connection reset"):
        load_dataset("mnist", root, True)
    assert list(root.iterdir()) == []
    with pytest.raises(HarnessError, match="and download is off"):  # the next attempt sees a clean folder
        load_dataset("mnist", root, True, download=False)


def test_download_times_out_on_a_silent_server(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    with socket.socket() as server:  # accepts connections (kernel backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        monkeypatch.setattr(tvd.MNIST, "mirrors", [url, url])
        monkeypatch.setattr(datasets_module, "DOWNLOAD_TIMEOUT_S", 0.3)
        # Without the timeout the read would wait forever; with it, it gives up and says so.
        with pytest.raises(HarnessError, match=r"could not be downloaded \(.*timed out"):
            load_dataset("mnist", tmp_path, True)
    assert list(tmp_path.iterdir()) == []
    assert socket.getdefaulttimeout() is None  # restored


def test_successful_download_is_moved_into_place(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist
    from torchvision.datasets.utils import extract_archive

    server = tmp_path / "server"
    arrays = write_fake_mnist(server, "MNIST", raw=False, gz=True, seed=3)

    def fake_download(url, download_root, filename, md5):  # what torchvision does, minus the network
        shutil.copy(server / "MNIST" / "raw" / filename, Path(download_root) / filename)
        extract_archive(str(Path(download_root) / filename), download_root)

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fake_download)
    root = tmp_path / "data"
    data = load_dataset("mnist", root, False, download=True)
    assert torch.equal(data.images, torch.from_numpy(arrays[False][0]))
    assert [p.name for p in root.iterdir()] == ["MNIST"]  # no temporary folder left
    assert (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    assert resolve_data_root(None) == tmp_path / "data"
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root("given") == tmp_path / "given"


def test_import_does_not_import_torchvision():
    code = "import sys, harness.data; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@requires_mnist
def test_real_mnist():
    root = real_data_dir()
    train = load_dataset("mnist", root, True, download=False)
    test = load_dataset("mnist", root, False, download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert train.targets.bincount().tolist()[:2] == [5923, 6742]  # published class counts
    assert int(train.targets.bincount(minlength=10).sum()) == 60000
    assert int(test.targets.bincount(minlength=10).sum()) == 10000
    assert train.classes[0] == "0 - zero"


def test_subset_classes_relabels_in_given_order(fake_data):
    data = load_dataset("mnist", fake_data.root, True, download=False)
    sub = subset_classes(data, [7, 3])
    keep = (data.targets == 7) | (data.targets == 3)
    assert torch.equal(sub.images, data.images[keep])
    assert torch.equal(sub.targets, (data.targets[keep] == 3).long())  # 7 -> 0, 3 -> 1
    assert sub.classes == [data.classes[7], data.classes[3]] and sub.mean == data.mean
    for bad in ([], [1, 1], [10]):
        with pytest.raises(HarnessError):
            subset_classes(data, bad)


def test_take_selects_samples(fake_data):
    data = load_dataset("cifar10", fake_data.root, True, download=False)
    part = data.take(torch.tensor([4, 0]))
    assert torch.equal(part.images[0], data.images[4]) and part.targets.tolist() == data.targets[[4, 0]].tolist()


# ---------------------------------------------------------------- split


def test_train_val_split():
    train, val = train_val_split(60000, 5000, seed=0)
    assert len(train) == 55000 and len(val) == 5000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60000))  # disjoint, complete
    assert torch.equal(val, train_val_split(60000, 5000, seed=0)[1])
    assert not torch.equal(val, train_val_split(60000, 5000, seed=1)[1])
    assert len(train_val_split(10, 0, seed=0)[1]) == 0
    for bad in (-1, 10, 11):
        with pytest.raises(HarnessError, match="val_size"):
            train_val_split(10, bad, seed=0)


# ---------------------------------------------------------------- loaders

N = 103  # not a multiple of any batch size or world size used below


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (N, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SAMPLE_IDS = torch.arange(N)  # targets = sample index, so every batch says which samples it holds


def make_loader(images, **kwargs) -> TensorLoader:
    return TensorLoader(images, SAMPLE_IDS, kwargs.pop("batch_size", 10), mean=MEAN, std=STD, **kwargs)


def epoch_ids(loader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


def test_epoch_permutation_is_a_pure_function():
    p = epoch_permutation(1000, seed=0, epoch=1)
    assert torch.equal(p.sort().values, torch.arange(1000))
    assert torch.equal(p, epoch_permutation(1000, seed=0, epoch=1))
    assert not torch.equal(p, epoch_permutation(1000, seed=1, epoch=0))  # not seed + epoch


def test_every_sample_once_per_epoch(images):
    loader = make_loader(images)
    assert len(loader) == 11 and loader.num_samples == loader.dataset_size == N
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(N))
    x, _ = batches[0]
    assert x.dtype == torch.float32 and x.shape == (10, 3, 4, 4)


def test_drop_last(images):
    loader = make_loader(images, drop_last=True)
    ids = epoch_ids(loader, 0)
    assert len(loader) == 10 and len(ids) == 100 == len(set(ids))


def test_orders_depend_on_seed_and_epoch_only(images):
    loader = make_loader(images, seed=1)
    e0, e1 = epoch_ids(loader, 0), epoch_ids(loader, 1)
    assert e0 != e1
    assert epoch_ids(loader, 0) == e0  # iterating again does not change the order
    assert epoch_ids(make_loader(images, seed=1), 1) == e1
    assert epoch_ids(make_loader(images, seed=2), 1) != e1
    assert epoch_ids(make_loader(images, shuffle=False), 5) == list(range(N))


def test_resume_from_state_dict_gives_the_same_batches(images):
    first = make_loader(images, seed=3)
    first.set_epoch(2)
    expected = [(x.clone(), y.clone()) for x, y in first]
    resumed = make_loader(images, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == {"seed": 3, "epoch": 2}
    for (x, y), (ex, ey) in zip(resumed, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_normalisation_matches_torchvision(images):
    from torchvision import transforms

    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    for x, y in make_loader(images):
        expected = torch.stack([reference(images[i].permute(1, 2, 0).numpy()) for i in y])
        torch.testing.assert_close(x, expected, atol=2e-6, rtol=0)


def test_channels_last(images):
    x_cl, _ = next(iter(make_loader(images, channels_last=True)))
    x, _ = next(iter(make_loader(images)))
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(x_cl, x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": 0},
        {"seed": 5, "drop_last": True},
        {"shuffle": False},
        {"rank": 1, "world_size": 2, "seed": 4},
        {"rank": 2, "world_size": 3, "shuffle": False},
    ],
)
def test_tensor_loader_equals_dataloader_path(images, kwargs):
    fast = make_loader(images, **kwargs)
    slow = make_dataloader(TensorDataset(images, SAMPLE_IDS), 10, num_workers=0, **kwargs)
    normalize = Uint8Normalize(MEAN, STD)
    assert len(fast) == len(slow)
    for epoch in (0, 1):
        fast.set_epoch(epoch)
        slow.set_epoch(epoch)
        for (x, y), (x_ref, y_ref) in zip(fast, slow, strict=True):
            assert torch.equal(y, y_ref) and torch.equal(x, normalize(x_ref))


def test_dataloader_path_with_workers_keeps_the_order(images):
    slow = make_dataloader(TensorDataset(images, SAMPLE_IDS), 10, seed=7, num_workers=2)
    assert slow.persistent_workers
    assert epoch_ids(slow, 3) == epoch_ids(make_loader(images, seed=7), 3)


def test_make_dataloader_defaults():
    loader = make_dataloader(TensorDataset(torch.zeros(8, 1)), 4)
    assert loader.num_workers == min(4, len(os.sched_getaffinity(0)))
    assert loader.pin_memory == torch.cuda.is_available()
    # Pinned host memory only for batches going to a CUDA device: for a CPU target it is a wasted copy.
    assert not make_dataloader(TensorDataset(torch.zeros(8, 1)), 4, num_workers=0, device="cpu").pin_memory
    assert make_dataloader(TensorDataset(torch.zeros(8, 1)), 4, num_workers=0, device="cuda:1").pin_memory
    assert loader.persistent_workers == (loader.num_workers > 0)
    loader.set_epoch(4)
    assert loader.sampler.epoch == 4


@pytest.mark.parametrize("world_size", [2, 3])
def test_training_shards_are_equal_and_cover_everything(images, world_size):
    loaders = [make_loader(images, rank=r, world_size=world_size, seed=9) for r in range(world_size)]
    shards = [epoch_ids(loader, 1) for loader in loaders]
    per_rank = -(-N // world_size)  # ceil
    assert [len(s) for s in shards] == [per_rank] * world_size
    assert len({len(loader) for loader in loaders}) == 1  # DDP ranks run the same number of steps
    everything = [i for s in shards for i in s]
    assert set(everything) == set(range(N)) and len(everything) == per_rank * world_size


@pytest.mark.parametrize("world_size", [2, 3])
def test_validation_shards_are_disjoint_without_padding(images, world_size):
    loaders = [make_loader(images, rank=r, world_size=world_size, shuffle=False) for r in range(world_size)]
    shards = [epoch_ids(loader, 0) for loader in loaders]
    assert [len(s) for s in shards] == [loader.num_samples for loader in loaders]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert sorted(i for s in shards for i in s) == list(range(N))  # disjoint, nothing counted twice


def test_padding_wraps_when_world_size_exceeds_dataset():
    shards = [shard_indices(2, shuffle=True, seed=0, rank=r, world_size=5).tolist() for r in range(5)]
    assert all(len(s) == 1 for s in shards) and {i for s in shards for i in s} == {0, 1}


def test_bad_loader_arguments(images):
    with pytest.raises(HarnessError, match="batch_size"):
        make_loader(images, batch_size=0)
    with pytest.raises(HarnessError, match="rank"):
        make_loader(images, rank=2, world_size=2)
    with pytest.raises(ValueError, match="uint8"):
        make_loader(images.float())
    with pytest.raises(ValueError, match="channels"):
        TensorLoader(images, SAMPLE_IDS, 10, mean=(0.5,), std=(0.5,))
