"""The `text_lines` data source (`harness.data.text_lines`, wired by `harness.recipe.data`): files read as
written (Latin-1 included), the fixed test split, vocabularies from training sentences only (inside every
cross-validation fold too), per-batch padding, and bad input as one line with exit code 2."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import LATIN1_WORDS, REPO, need_real_mr, write_fake_mr
from hang_guard import run_guarded

from harness.data import TextLines, TextLoader, build_vocabulary, load_text_lines
from harness.data.text_lines import PAD_INDEX, UNK_INDEX, read_text_lines
from harness.recipe.data import build_data, identify_test_split
from harness.recipe.schema import DataConfig, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

FILES = {"neg": "rt-polaritydata/rt-polarity.neg", "pos": "rt-polaritydata/rt-polarity.pos"}
RECIPE = str(REPO / "recipes/mr_cnn.yaml")


def data_cfg(root: Path, **keys) -> DataConfig:
    return DataConfig(name="text_lines", files=FILES, encoding="latin-1", root=str(root), **keys)


def byte_level_sentences(path: Path) -> list[list[str]]:
    """The oracle: split the raw bytes (lines on b"\\n", words on b" " and b"\\t"), decode each word alone."""
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    return [[w.decode("latin-1") for w in re.split(rb"[ \t]+", line) if w] for line in lines[:-1]]


def sentences_of(split: TextLines) -> list[tuple[tuple[str, ...], int]]:
    return [(tuple(split[i][0]), split[i][1]) for i in range(len(split))]


# ---------------------------------------------------------------- reading
def test_files_are_read_line_by_line_and_word_by_word_as_written(tmp_path: Path) -> None:
    written = write_fake_mr(tmp_path, n_per_class=30)
    full = read_text_lines(FILES, tmp_path, "latin-1")
    expected = [(tuple(s), label) for label, name in enumerate(FILES)
                for s in byte_level_sentences(tmp_path / FILES[name])]
    assert sentences_of(full) == expected
    assert [list(s) for s, label in expected if label == 1] == written["pos"]
    assert full.classes == ["neg", "pos"] and len(full) == 60
    # 0x85 (NEXT LINE in Latin-1) and 0xa0 (no-break space) stay inside their words
    words = {w for s, _ in expected for w in s}
    assert {"wait\x85", "non\xa0stop", "café"} <= words and set(LATIN1_WORDS) <= set(full.words)
    assert sorted(full.words) == sorted(words)  # one raw id per distinct word


def test_classes_follow_the_order_of_data_files(tmp_path: Path) -> None:
    write_fake_mr(tmp_path, n_per_class=20)
    swapped = read_text_lines({"pos": FILES["pos"], "neg": FILES["neg"]}, tmp_path, "latin-1")
    assert swapped.classes == ["pos", "neg"]
    assert swapped[0][0] == byte_level_sentences(tmp_path / FILES["pos"])[0] and swapped[0][1] == 0


def test_the_test_split_is_a_fixed_stratified_tenth_and_take_keeps_sentences(tmp_path: Path) -> None:
    write_fake_mr(tmp_path, n_per_class=57)
    full = read_text_lines(FILES, tmp_path, "latin-1")
    train, test = load_text_lines(FILES, tmp_path, "latin-1")
    assert len(train) + len(test) == len(full) == 114
    assert torch.bincount(test.targets).tolist() in ([5, 6], [6, 5], [6, 6], [5, 5])  # 57 / 10 per class
    every = sentences_of(train) + sentences_of(test)
    assert Counter(every) == Counter(sentences_of(full))  # disjoint and covering, sentences intact
    _, again_test = load_text_lines(FILES, tmp_path, "latin-1")
    assert sentences_of(again_test) == sentences_of(test)  # fixed: no seed involved
    # the recipe's seed does not move it either
    identity = identify_test_split(data_cfg(tmp_path))
    assert identity == identify_test_split(data_cfg(tmp_path, val_size=7))
    assert identity.describe().startswith("12 sentences of 2 classes")
    pos = tmp_path / FILES["pos"]  # the same sizes and labels, one more word in every positive sentence
    pos.write_bytes(pos.read_bytes().replace(b"\n", b" !\n"))
    changed = identify_test_split(data_cfg(tmp_path))
    assert (changed.size, changed.classes) == (identity.size, identity.classes) and changed != identity


# ---------------------------------------------------------------- vocabulary
def test_vocabulary_counts_the_training_sentences_only() -> None:
    words = ["x", "y", "z", "<unk>", "w"]  # raw ids in order of first appearance
    train = TextLines(torch.tensor([0, 1, 2, 2, 2, 1, 3, 2]), torch.tensor([0, 2, 6, 8]), torch.tensor([0, 1, 0]),
                      ["a", "b"], words)  # x y | z z z y | <unk> z
    counts = Counter(words[i] for i in train.tokens.tolist())
    assert counts == {"z": 4, "y": 2, "x": 1, "<unk>": 1}  # w: only in held-out text
    vocabulary = build_vocabulary(train, min_freq=1)
    assert vocabulary.words == ["<pad>", "<unk>", "z", "y", "x"]  # most frequent first; a literal <unk> is <unk>
    assert build_vocabulary(train, min_freq=2).words == ["<pad>", "<unk>", "z", "y"]
    held_out = TextLines(torch.tensor([4, 2, 0]), torch.tensor([0, 3]), torch.tensor([1]), ["a", "b"], words)
    assert build_vocabulary(train, min_freq=2).encode(held_out).tolist() == [UNK_INDEX, 2, UNK_INDEX]
    assert vocabulary.encode(train).tolist() == [4, 3, 2, 2, 2, 3, UNK_INDEX, 2]


def test_build_data_takes_the_vocabulary_from_the_sentences_it_trains_on(tmp_path: Path) -> None:
    write_fake_mr(tmp_path, n_per_class=60)
    data = build_data(data_cfg(tmp_path, val_size=20, batch_size=16), torch.device("cpu"), seed=3)
    trained_on = [s for batch, _ in data.train for s in batch.tolist()]
    assert len(trained_on) == 108 - 20  # 120 sentences, 12 in the test split, 20 held out
    decoded = Counter(data.vocabulary[i] for s in trained_on for i in s if i != PAD_INDEX)
    assert "<unk>" not in decoded  # every training word is in the vocabulary
    assert set(data.vocabulary[2:]) == set(decoded)  # and nothing else is
    seen = set(decoded)
    for loader in (data.val, data.test):  # words of held-out sentences that training lacks are <unk>
        for batch, _ in loader:
            assert all(i == UNK_INDEX or data.vocabulary[i] in seen for i in batch.flatten().tolist() if i)


def test_a_fold_vocabulary_never_holds_a_word_seen_only_in_its_held_out_fold(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on the data cross-validation really builds, fold by fold, and check it against the files."""
    import harness.recipe.parts as parts
    from harness.cv import main

    write_fake_mr(tmp_path / "data", n_per_class=40)
    full = read_text_lines(FILES, tmp_path / "data", "latin-1")
    train, _ = load_text_lines(FILES, tmp_path / "data", "latin-1")
    built = []

    def spy(cfg, *args, **kwargs):
        data = real_build_data(cfg, *args, **kwargs)
        built.append((kwargs["indices"], data))
        return data

    real_build_data = parts.build_data
    monkeypatch.setattr(parts, "build_data", spy)
    args = [RECIPE, f"data.root={tmp_path / 'data'}", f"logging.root={tmp_path / 'runs'}", "trainer.epochs=1",
            "trainer.progress=false", "data.batch_size=16", "model.args={num_classes: 2, embed_dim: 8, maps: 4}"]
    assert main([*args, "--folds", "3"]) == 0
    assert len(built) == 3
    for (train_idx, val_idx), data in built:
        fold_train = Counter(w for i in train_idx.tolist() for w in train[i][0])
        held_out = {w for i in val_idx.tolist() for w in train[i][0]}
        only_held_out = held_out - set(fold_train)
        assert only_held_out  # every sentence has a word of its own: the check below can fail
        assert not only_held_out & set(data.vocabulary)
        assert set(data.vocabulary[2:]) == set(fold_train)
    assert len(full.words) > max(len(d.vocabulary) for _, d in built)


# ---------------------------------------------------------------- batches
def test_batches_are_padded_to_their_own_longest_sentence(tmp_path: Path) -> None:
    write_fake_mr(tmp_path, n_per_class=30)
    train, _ = load_text_lines(FILES, tmp_path, "latin-1")
    vocabulary = build_vocabulary(train)
    loader = TextLoader(vocabulary.encode(train), train.offsets, train.targets, batch_size=7, shuffle=True, seed=1)
    loader.set_epoch(2)
    seen = []
    for tokens, target in loader:
        assert tokens.dtype == torch.int64 and target.dtype == torch.int64
        real = tokens != PAD_INDEX
        lengths = real.sum(1)
        assert tokens.shape[1] == int(lengths.max())  # the batch's longest, not the split's
        assert torch.equal(real, torch.arange(tokens.shape[1]) < lengths[:, None])  # right-padded
        seen += [(tuple(vocabulary.words[i] for i in row[:n]), int(y))
                 for row, n, y in zip(tokens.tolist(), lengths.tolist(), target.tolist(), strict=True)]
    assert Counter(seen) == Counter(sentences_of(train))  # every sentence once, words in order
    loader.set_epoch(2)
    assert [t.tolist() for t, _ in loader] == [t.tolist() for t, _ in loader]  # the order is (seed, epoch)'s


# ---------------------------------------------------------------- bad input: one line, exit code 2
def train_main(tmp_path: Path, *extra: str) -> int:
    from harness.train import main

    return main([RECIPE, f"data.root={tmp_path / 'data'}", f"logging.root={tmp_path / 'runs'}",
                 "trainer.progress=false", "data.val_size=10", *extra])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


ASCII = b"".join(b"plain words %d\n" % i for i in range(30))  # valid in any encoding


@pytest.mark.parametrize(("files", "extra", "expected"), [
    ({"pos": None}, [], ["rt-polarity.pos not found", "data.files.pos=", "under the data root", "HARNESS_DATA_DIR"]),
    ({"pos": b""}, [], ["data.files.pos:", "rt-polarity.pos is empty"]),
    ({"pos": b"\n \n\t\n"}, [], ["data.files.pos:", "has no lines with words (3 blank)"]),
    ({"pos": b"fine film\n\nbad\n"}, [], ["data.files.pos:", "line 2 is blank"]),
    ({"neg": ASCII, "pos": b"a caf\xe9 film\n" * 20}, ["data.encoding=utf-8"],
     ["data.files.pos:", "rt-polarity.pos is not valid utf-8 (data.encoding): byte offset 5 (0xe9)"]),
    ({}, ["data.encoding=latin-9x"], ["data.encoding: Value error, unknown encoding 'latin-9x'"]),
    ({}, ["data.files={pos: rt-polaritydata/rt-polarity.pos}"], ["data.files: text_lines reads one file per class, "
                                                               "at least two"]),
    ({}, ["data.classes=[0]"], ["data.classes does not apply to text_lines"]),
    ({}, ["data.name=mnist"], ["data.files is read by data.name=text_lines only"]),
    ({}, ["model.name=mlp"], ["model.name=mlp takes no vocab_size"]),
    ({}, ["model.args.vocab_size=5"], ["model.args.vocab_size=5: the embedding is sized from the data's vocabulary"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          files: dict[str, bytes | None], extra: list[str],
                                          expected: list[str]) -> None:
    write_fake_mr(tmp_path / "data", n_per_class=30)
    for label, content in files.items():  # None: no such file
        path = tmp_path / "data" / FILES[label]
        path.unlink() if content is None else path.write_bytes(content)
    assert train_main(tmp_path, *extra) == 2
    err = one_error_line(capsys)
    assert all(part in err for part in expected), err
    assert not (tmp_path / "runs").exists()  # refused before any run folder


def test_the_real_mr_is_not_utf8_and_the_command_line_says_where(tmp_path: Path) -> None:
    """A subprocess, as a user runs it: MR read as UTF-8 fails at the first non-ASCII byte of the .neg file."""
    import os
    import sys

    root = need_real_mr()
    env = {**os.environ, "HARNESS_DATA_DIR": str(root)}
    result = run_guarded([sys.executable, "-m", "harness.train", RECIPE, "data.encoding=utf-8",
                          f"logging.root={tmp_path}"], cwd=REPO, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"error: data.files.neg: {root / FILES['neg']} is not valid utf-8 (data.encoding): byte "
                             "offset 3777 (0xe9) cannot be decoded; set data.encoding to the file's encoding, e.g. "
                             "latin-1 or cp1252\n")


# ---------------------------------------------------------------- the real files
def test_the_real_mr_files() -> None:
    root = need_real_mr()
    full = read_text_lines(FILES, root, "latin-1")
    assert len(full) == 10662 and torch.bincount(full.targets).tolist() == [5331, 5331]
    oracle = [s for f in FILES.values() for s in byte_level_sentences(root / f)]
    assert len(oracle) == 10662 and len(full.words) == len({w for s in oracle for w in s}) == 21420
    # 21,420 distinct words; str.split() would cut at the 23 bytes 0x85 (U+0085) and make it 21,401
    train, test = load_text_lines(FILES, root, "latin-1")
    assert (len(train), len(test)) == (9595, 1067) and torch.bincount(test.targets).tolist() == [534, 533]
    recipe = load_recipe(RECIPE)
    assert recipe.data.files == FILES and recipe.data.encoding == "latin-1"
