"""Sentence classification from text files: one file per class, one sample per line.

    train, test = load_text_lines({"neg": "rt-polaritydata/rt-polarity.neg",
                                   "pos": "rt-polaritydata/rt-polarity.pos"}, root=None, encoding="latin-1")
    vocabulary = build_vocabulary(train, min_freq=1)        # from the training samples only
    loader = TextLoader(vocabulary.encode(train), train.targets, batch_size=50, shuffle=True)
    for tokens, target in loader: ...                        # int64 (B, longest sentence of the batch), 0 = <pad>

The files are read once. Lines are split on "\\n" only and words on ASCII blanks only: in Latin-1 the
byte 0x85 is U+0085 (NEXT LINE) and 0xa0 a no-break space, which Python's `str.splitlines()` and
`str.split()` would take for line and word breaks (Pang & Lee's MR files hold 23 bytes 0x85). Every
distinct word of the files gets a raw id (order of first appearance), so a split is two int64 tensors,
and a vocabulary is a lookup table from raw ids to its own ids: building one for a cross-validation
fold, and encoding a split with it, is a bincount and a gather, no Python per sentence.

A vocabulary is made from a training split alone (`build_vocabulary`): `<pad>` (0), `<unk>` (1), then
every word seen at least `min_freq` times in that split, most frequent first (ties: first appearance).
Words of held-out sentences that the training split lacks become `<unk>`: held-out text never shapes
the vocabulary.

There is no official test split in a folder of class files, so one is fixed here like the bundled
sets' (`fixed_test_split`): one of `TEST_SPLIT_FOLDS` = 10 stratified folds, drawn with a constant seed,
whatever the run's seed. Ten per cent: one fold of the 10-fold protocol the MR literature reports.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from harness.data.bundled import fixed_test_split
from harness.data.datasets import resolve_data_root
from harness.data.tensor_loader import ShardedEpochs, check_rank
from harness.errors import HarnessError

TEXT_LINES = "text_lines"  # the recipe's data.name of this source
PAD, UNK = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1  # every vocabulary starts with these two
TEST_SPLIT_FOLDS = 10  # the fixed test split is 1 of 10 stratified folds: 10 % of every class
BLANKS = re.compile(r"[ \t\r\f\v]+")  # ASCII blanks only: see the module docstring


@dataclass(eq=False)
class TextLines:
    """Sentences of one split as raw word ids: sentence i is `tokens[offsets[i]:offsets[i + 1]]`.

    `words[raw_id]` is the word; every split read from the same files shares one `words` list (the
    distinct words of all the files), so raw ids mean the same in train, validation and test.
    `targets` is int64 (N,); class i is `classes[i]`, the i-th entry of `data.files`.
    """

    tokens: torch.Tensor  # int64, every sentence's raw word ids, one after another
    offsets: torch.Tensor  # int64 (N + 1,): where each sentence starts; offsets[-1] == len(tokens)
    targets: torch.Tensor  # int64 (N,)
    classes: list[str]
    words: list[str]  # raw id -> word, shared by the splits of one source

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[list[str], int]:
        """`(words of sentence i, class index)`: for reading and tests, not for batching."""
        ids = self.tokens[self.offsets[i]:self.offsets[i + 1]].tolist()
        return [self.words[j] for j in ids], int(self.targets[i])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def lengths(self) -> torch.Tensor:
        """Words per sentence, int64 (N,)."""
        return self.offsets[1:] - self.offsets[:-1]

    def take(self, index: torch.Tensor) -> TextLines:
        """The sentences at `index`, in that order (one side of a split, a fold), same words and classes."""
        index = torch.as_tensor(index, dtype=torch.int64)
        lengths = self.lengths[index]
        offsets = torch.zeros(len(index) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        # position p of the new sentence k comes from old position starts[k] + (p - offsets[k])
        shift = (self.offsets[:-1][index] - offsets[:-1]).repeat_interleave(lengths)
        tokens = self.tokens[torch.arange(int(offsets[-1])) + shift]
        return replace(self, tokens=tokens, offsets=offsets, targets=self.targets[index], classes=list(self.classes))

    def fingerprint(self) -> str:
        """sha256 of the sentences (their words, not raw ids) and labels, in order: which samples these are."""
        digest = hashlib.sha256()
        for i in range(len(self)):
            words, target = self[i]
            digest.update(f"{target}\t{' '.join(words)}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Vocabulary:
    """Words -> ids for a model: `words[i]` is id i; `<pad>` is 0 and `<unk>` is 1.

    `table` maps the raw ids of the source it was built on (`TextLines.words`) to these ids.
    """

    words: list[str]
    table: torch.Tensor  # int64 (len(source words),)
    min_freq: int

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, split: TextLines) -> torch.Tensor:
        """`split.tokens` as vocabulary ids (same layout: cut by `split.offsets`); unseen words are <unk>."""
        if len(self.table) != len(split.words):
            raise ValueError(f"this vocabulary was built on a source of {len(self.table)} distinct words, "
                             f"the split's has {len(split.words)}")
        return self.table[split.tokens]


def build_vocabulary(train: TextLines, min_freq: int = 1) -> Vocabulary:
    """The vocabulary of the training sentences `train` only: <pad>, <unk>, then every word seen at least
    `min_freq` times there, most frequent first, ties in order of first appearance in the files.

    A literal "<pad>" or "<unk>" in the text is read as <unk>: the two ids are reserved."""
    if min_freq < 1:
        raise HarnessError(f"data.min_freq must be >= 1, got {min_freq}")
    counts = torch.bincount(train.tokens, minlength=len(train.words))
    for special in (PAD, UNK):  # reserved: never a word of the vocabulary
        if special in train.words:
            counts[train.words.index(special)] = 0
    kept = torch.nonzero(counts >= min_freq).flatten()  # raw ids, in order of first appearance
    kept = kept[torch.sort(counts[kept], descending=True, stable=True).indices]
    table = torch.full((len(train.words),), UNK_INDEX, dtype=torch.int64)
    table[kept] = torch.arange(2, 2 + len(kept))
    return Vocabulary([PAD, UNK, *(train.words[i] for i in kept.tolist())], table, min_freq)


def read_class_file(path: Path, label: str, encoding: str) -> list[list[str]]:
    """The sentences of one class file: a list of words per line. Bad input is one HarnessError line."""
    raw = path.read_bytes()
    where = f"data.files.{label}: {path}"
    if not raw:
        raise HarnessError(f"{where} is empty: it must hold the samples of class {label!r}, one per line")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise HarnessError(f"{where} is not valid {encoding} (data.encoding): byte offset {e.start} "
                           f"(0x{raw[e.start]:02x}) cannot be decoded; set data.encoding to the file's encoding, "
                           "e.g. latin-1 or cp1252") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    sentences = [[w for w in BLANKS.split(line) if w] for line in lines]
    if not any(sentences):
        raise HarnessError(f"{where} has no lines with words ({len(lines)} blank): it must hold the samples of "
                           f"class {label!r}, one per line")
    blank = next((n for n, words in enumerate(sentences, start=1) if not words), None)
    if blank is not None:
        raise HarnessError(f"{where}: line {blank} is blank; every line is one sample of class {label!r}: "
                           "remove blank lines")
    return sentences


def read_text_lines(files: Mapping[str, str | os.PathLike], root: str | os.PathLike | None,
                    encoding: str) -> TextLines:
    """Every sentence of every class file, in file order then line order: class i is the i-th entry of
    `files` (class name -> path; a relative path lies under the data root, see `resolve_data_root`)."""
    if len(files) < 2:
        raise HarnessError(f"data.files: give one file per class, at least two classes; got {dict(files)}")
    data_root = resolve_data_root(root)
    paths = {label: data_root / Path(os.path.expanduser(path)) for label, path in files.items()}
    for label, path in paths.items():  # every file is checked before any is read
        if not path.is_file():
            raise HarnessError(f"text_lines: {path} not found (data.files.{label}={str(files[label])!r} under the data "
                               f"root {data_root}): put the file there, or set data.root / HARNESS_DATA_DIR")
    raw_ids: dict[str, int] = {}
    tokens: list[int] = []
    lengths: list[int] = []
    targets: list[int] = []
    for label_index, (label, path) in enumerate(paths.items()):
        for words in read_class_file(path, label, encoding):
            tokens.extend(raw_ids.setdefault(w, len(raw_ids)) for w in words)
            lengths.append(len(words))
            targets.append(label_index)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0, out=offsets[1:])
    return TextLines(torch.tensor(tokens, dtype=torch.int64), offsets, torch.tensor(targets, dtype=torch.int64),
                     list(files), list(raw_ids))


def load_text_lines(files: Mapping[str, str | os.PathLike], root: str | os.PathLike | None,
                    encoding: str) -> tuple[TextLines, TextLines]:
    """The training and the fixed test split (`TEST_SPLIT_FOLDS`) of the class files: see the module docstring."""
    full = read_text_lines(files, root, encoding)
    smallest = int(torch.bincount(full.targets).min())
    if smallest < TEST_SPLIT_FOLDS:
        raise HarnessError(f"data.files: class {full.classes[int(torch.bincount(full.targets).argmin())]!r} has "
                           f"{smallest} lines; the fixed test split takes 1 of {TEST_SPLIT_FOLDS} stratified folds, "
                           f"so every class needs at least {TEST_SPLIT_FOLDS}")
    train_idx, test_idx = fixed_test_split(full.targets, folds=TEST_SPLIT_FOLDS)
    return full.take(train_idx), full.take(test_idx)


class TextLoader(ShardedEpochs):
    """Batches `(tokens, target)` of encoded sentences: tokens int64 (B, L), L the longest sentence of the
    batch, right-padded with `PAD_INDEX`; the model tells real words from padding by `tokens != 0`.

    The sentences are padded once into an (N, longest) matrix that lives on the device; a batch is one
    gather and a slice to its own longest length (read from the lengths kept on the host: no device sync).
    The order is `shard_indices(...)` for `(seed, epoch)`, as `TensorLoader`'s: exact resume, and
    this rank's shard under torchrun (training shards padded by wrap-around, evaluation shards not).
    """

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor, targets: torch.Tensor, batch_size: int, *,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
        if offsets.shape != (len(targets) + 1,) or int(offsets[-1]) != len(ids):
            raise ValueError(f"offsets must be ({len(targets) + 1},) ending at {len(ids)}, got {tuple(offsets.shape)}")
        check_rank(rank, world_size)
        self.lengths = offsets[1:] - offsets[:-1]  # host: each batch's padded length, without a sync
        if len(targets) and int(self.lengths.min()) < 1:
            raise ValueError("every sentence needs at least one word")
        longest = int(self.lengths.max()) if len(targets) else 1
        padded = torch.full((len(targets), longest), PAD_INDEX, dtype=torch.int64)
        row = torch.arange(len(targets)).repeat_interleave(self.lengths)
        padded[row, torch.arange(len(ids)) - offsets[:-1].repeat_interleave(self.lengths)] = ids
        self.padded, self.targets = padded, targets
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.to(device)

    def to(self, device: torch.device | str) -> TextLoader:
        """Move the padded sentences and the targets to `device` (once; batches are then made there)."""
        self.device = torch.device(device)
        self.padded, self.targets = self.padded.to(self.device), self.targets.to(self.device)
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = self.epoch_indices()
        stop = len(self) * self.batch_size if self.drop_last else len(index)
        for start in range(0, stop, self.batch_size):
            batch = index[start:start + self.batch_size]
            longest = int(self.lengths[batch].max())  # host tensors: no device sync
            on_device = batch.to(self.device)
            yield self.padded[on_device, :longest], self.targets[on_device]
