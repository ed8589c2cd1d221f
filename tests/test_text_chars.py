"""Character-level text (harness/data/text_chars.py): the vocabulary and ids, nanoGPT's 90/10 split, random
training windows (shifted targets, seeded, resumable, sharded by rank) and validation windows that predict
every character once; bad input is one line. The real tiny Shakespeare is checked when it is present."""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import pytest
import torch
from conftest import REPO

from harness.data import RandomWindows, SequentialWindows, epoch_generator, load_text_chars, resolve_text_path
from harness.data.text_chars import IGNORE_INDEX, decode, encode
from harness.errors import HarnessError

SHAKESPEARE = "tinyshakespeare/input.txt"


def shakespeare() -> Path:
    """The real corpus under $HARNESS_DATA_DIR or ../shared/data; skipped without it, failed on CI."""
    for root in (os.environ.get("HARNESS_DATA_DIR"), REPO.parent / "shared" / "data"):
        if root and (Path(root) / SHAKESPEARE).is_file():
            return Path(root) / SHAKESPEARE
    if os.environ.get("CI") and (REPO.parent / "shared" / "data").is_dir():
        pytest.fail(f"{SHAKESPEARE} not found, and CI is set with ../shared/data present", pytrace=False)
    pytest.skip(f"{SHAKESPEARE} not found ($HARNESS_DATA_DIR, ../shared/data)")


def write(tmp_path: Path, text: str | bytes, name: str = "text.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_vocabulary_ids_and_split(tmp_path: Path) -> None:
    text = "hello, world!\nHELLO again\n" * 7
    loaded = load_text_chars(write(tmp_path, text), "utf-8")
    assert loaded.vocabulary == "".join(sorted(set(text)))
    assert loaded.ids.dtype == torch.int64 and decode(loaded.ids, loaded.vocabulary) == text
    assert torch.equal(encode("hello", loaded.vocabulary), loaded.ids[:5])
    train, val = loaded.split()
    assert len(train) == int(len(text) * 0.9) and torch.equal(torch.cat([train, val]), loaded.ids)
    with pytest.raises(HarnessError, match=r"'Z' not in the model's vocabulary"):
        encode("Zed", loaded.vocabulary)


def test_the_real_tiny_shakespeare() -> None:
    loaded = load_text_chars(shakespeare(), "utf-8")
    train, val = loaded.split()
    assert (len(loaded.ids), len(loaded.vocabulary)) == (1_115_394, 65)
    assert (len(train), len(val)) == (1_003_854, 111_540)  # nanoGPT's prepare.py prints the same
    assert loaded.vocabulary[:14] == "\n !$&',-.3:;?A"
    assert decode(loaded.ids[:14], loaded.vocabulary) == "First Citizen:"


def test_relative_paths_resolve_under_the_data_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "env"))
    assert resolve_text_path("a/b.txt", None) == tmp_path / "env" / "a" / "b.txt"
    assert resolve_text_path("a/b.txt", str(tmp_path / "root")) == tmp_path / "root" / "a" / "b.txt"
    assert resolve_text_path(str(tmp_path / "abs.txt"), str(tmp_path / "root")) == tmp_path / "abs.txt"
    monkeypatch.delenv("HARNESS_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert resolve_text_path("b.txt", None) == tmp_path / "data" / "b.txt"


def test_bad_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"text file not found: data.path must be at .*nope.txt; put the file"):
        load_text_chars(tmp_path / "nope.txt", "utf-8")
    with pytest.raises(HarnessError, match=r"empty.txt: the file is empty"):
        load_text_chars(write(tmp_path, b"", "empty.txt"), "utf-8")
    latin = write(tmp_path, "caf\u00e9 au lait".encode("latin-1"), "latin.txt")  # é is one byte, 0xe9
    with pytest.raises(HarnessError, match=r"latin.txt: byte offset 3 \(0xe9\) is not valid utf-8 "
                                           r"\(data.encoding=utf-8\); set data.encoding"):
        load_text_chars(latin, "utf-8")
    assert load_text_chars(latin, "latin-1").vocabulary.endswith("\u00e9")
    with pytest.raises(HarnessError, match=r"data.encoding='klingon': not an encoding"):
        load_text_chars(latin, "klingon")
    for too_long in (8, 9):  # 8 characters: a window of 8 needs 9
        with pytest.raises(HarnessError, match=rf"data.block_size={too_long} is larger than the validation text "
                                               r"\(8 characters\)"):
            SequentialWindows(torch.arange(8), too_long, 2)
    with pytest.raises(HarnessError, match=r"larger than the training text \(8 characters\)"):
        RandomWindows(torch.arange(8), 8, 2)


def test_random_windows_are_shifted_and_seeded() -> None:
    ids = torch.arange(1000)  # a window of consecutive ids shows its offset in its first element
    windows = RandomWindows(ids, block_size=16, batch_size=5, seed=3)
    assert windows.tokens_per_sample == 16
    batches = list(islice(windows, 200))  # more than one chunk of offsets
    for x, y in batches:
        assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
        assert torch.equal(x, x[:, :1] + torch.arange(16)) and torch.equal(y, x + 1)
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert starts.min() >= 0 and starts.max() <= 1000 - 17 and starts.max() > 950  # the whole range is drawn
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, islice(windows, 200), strict=True))  # same pass
    windows.set_epoch(1)
    assert not torch.equal(next(iter(windows))[0], batches[0][0])  # another pass, other windows
    other_seed = RandomWindows(ids, 16, 5, seed=4)
    assert not torch.equal(next(iter(other_seed))[0], batches[0][0])


def test_a_resumed_pass_continues_with_the_same_windows() -> None:
    ids = torch.arange(500)
    straight = RandomWindows(ids, 8, 4, seed=1)
    straight.set_epoch(2)
    expected = [x for x, _ in islice(straight, 90)]
    resumed = RandomWindows(ids, 8, 4, seed=7)
    resumed.load_state_dict(straight.state_dict())  # what a checkpoint holds: seed and epoch (pass)
    assert all(torch.equal(a, b) for a, b in zip(islice((x for x, _ in resumed), 70, 90), expected[70:], strict=True))


def test_ranks_take_their_own_row_of_one_shared_draw() -> None:
    ids = torch.arange(2000)
    ranks = [RandomWindows(ids, 8, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    # Every rank draws the same (chunk, world_size, batch) offsets for the pass and keeps row `rank`.
    drawn = torch.randint(2000 - 8, (RandomWindows.CHUNK, 2, 3), generator=epoch_generator(5, 0))
    for i, ((x0, _), (x1, _)) in enumerate(islice(zip(*ranks, strict=True), 5)):
        assert torch.equal(x0[:, 0], drawn[i, 0]) and torch.equal(x1[:, 0], drawn[i, 1])
        assert not torch.equal(x0, x1)


def test_the_global_batch_is_the_same_at_any_world_size() -> None:
    """1 process x 12 windows, 2 ranks x 6, 3 ranks x 4: the ranks' batches, stacked in rank order, are the
    one process's batch, step after step (what lets a torchrun run equal a single-process one)."""
    ids = torch.arange(3000)
    one = RandomWindows(ids, 16, 12, seed=2)
    for world in (2, 3):
        ranks = [RandomWindows(ids, 16, 12 // world, seed=2, rank=r, world_size=world) for r in range(world)]
        for step, (whole, *parts) in enumerate(islice(zip(one, *ranks, strict=True), 2 * RandomWindows.CHUNK + 3)):
            assert torch.equal(whole[0], torch.cat([x for x, _ in parts])), (world, step)
            assert torch.equal(whole[1], torch.cat([y for _, y in parts])), (world, step)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_validation_windows_predict_every_character_once(world_size: int) -> None:
    ids = torch.randint(0, 50, (103,), generator=torch.Generator().manual_seed(0))  # 102 predictions: 12 windows of 9
    pairs = []
    for rank in range(world_size):
        windows = SequentialWindows(ids, 9, 5, rank=rank, world_size=world_size)
        assert len(windows) == -(-len(windows.inputs) // 5)
        for x, y in windows:
            assert x.shape == y.shape and x.shape[1] == 9 and x.shape[0] <= 5
            pairs += [(int(a), int(b)) for a, b in zip(x.flatten(), y.flatten(), strict=True) if b != IGNORE_INDEX]
    assert sorted(pairs) == sorted(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))
    assert sum(SequentialWindows(ids, 9, 5, rank=r, world_size=world_size).tokens for r in range(world_size)) == 102


def test_validation_order_is_fixed_and_spread_over_the_text() -> None:
    ids = torch.arange(10_001)
    first = next(iter(SequentialWindows(ids, 10, 20)))[0][:, 0]
    assert torch.equal(first, next(iter(SequentialWindows(ids, 10, 20)))[0][:, 0])  # the same every time
    assert first.min() < 2500 and first.max() > 7500  # not the first 200 characters of the text
