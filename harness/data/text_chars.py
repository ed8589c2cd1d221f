"""Character-level text: a file read once into one int64 tensor of character ids, and its two loaders.

nanoGPT's `shakespeare_char` convention: the vocabulary is every distinct character of the file, sorted by
code point (the same file always gives the same mapping), and the first 90 % of the characters train, the
last 10 % validate. The ids live on the device; a batch is one gather of `block_size + 1` consecutive ids
per window, no Python per sample.

    text = load_text_chars("tinyshakespeare/input.txt", encoding="utf-8")   # 1,115,394 ids, 65 characters
    train, val = text.split()
    batches = RandomWindows(train, block_size=64, batch_size=12, seed=0, device="cuda")
    x, y = next(iter(batches))      # (12, 64) each; y is x shifted by one character

- `RandomWindows` (training): an endless stream of windows at random offsets, as nanoGPT's `get_batch`.
- `SequentialWindows` (validation): every character of the text predicted exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.datasets import resolve_data_root
from harness.data.tensor_loader import check_rank, epoch_generator, epoch_permutation
from harness.errors import HarnessError

TEXT_CHARS = "text_chars"  # the recipe's data.name of this source
TRAIN_FRACTION = 0.9  # nanoGPT's split: the first 90 % of the characters train, the rest validate
IGNORE_INDEX = -100  # the target of a padded position (torch's cross_entropy default)


@dataclass(frozen=True)
class CharText:
    """A text as character ids: `ids[i]` is the position of the i-th character in `vocabulary`."""

    ids: torch.Tensor  # int64 (N,), on the CPU
    vocabulary: str  # the distinct characters, sorted by code point
    path: Path

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(first 90 %, last 10 %) of the ids: nanoGPT's `data[:int(n*0.9)]` and `data[int(n*0.9):]`."""
        cut = int(len(self.ids) * TRAIN_FRACTION)
        return self.ids[:cut], self.ids[cut:]


def resolve_text_path(path: str, root: str | None) -> Path:
    """`data.path` as a file: an absolute path as it is, a relative one under the data root
    (`data.root`, else $HARNESS_DATA_DIR, else ./data), like every other data set."""
    given = Path(path).expanduser()
    return given if given.is_absolute() else resolve_data_root(root) / given


def load_text_chars(path: Path, encoding: str) -> CharText:
    """Read and decode `path`, build the vocabulary and the ids. Bad input is one HarnessError line:
    a missing or empty file, an unknown encoding, bytes that are not `encoding` (with their offset)."""
    if not path.is_file():
        raise HarnessError(f"text file not found: data.path must be at {path}; put the file there, or set "
                           "data.root / HARNESS_DATA_DIR (a relative data.path lies under the data root)")
    raw = path.read_bytes()
    if not raw:
        raise HarnessError(f"{path}: the file is empty; a character-level model needs text")
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise HarnessError(f"data.encoding={encoding!r}: not an encoding Python knows (e.g. utf-8, latin-1)") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: byte offset {e.start} (0x{raw[e.start]:02x}) is not valid {encoding} "
                           f"(data.encoding={encoding}); set data.encoding to the file's encoding") from None
    # Code points through numpy: np.unique sorts them (= sorted(set(text))) and maps each character to
    # its index, without a Python loop over a million characters.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    points, ids = np.unique(codes, return_inverse=True)
    return CharText(torch.from_numpy(ids.astype(np.int64)), "".join(map(chr, points)), path)


def encode(text: str, vocabulary: str) -> torch.Tensor:
    """Ids (int64) of `text` in `vocabulary`; a character outside it is a HarnessError naming it."""
    index = {ch: i for i, ch in enumerate(vocabulary)}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise HarnessError(f"{''.join(unknown)!r} not in the model's vocabulary of {len(vocabulary)} characters "
                           f"({vocabulary[:40]!r}{'...' if len(vocabulary) > 40 else ''})")
    return torch.tensor([index[ch] for ch in text], dtype=torch.int64)


def decode(ids: torch.Tensor, vocabulary: str) -> str:
    return "".join(vocabulary[i] for i in ids.tolist())


def check_fits(ids: torch.Tensor, block_size: int, what: str) -> None:
    """A window of `block_size` characters and the character after it must fit in the text."""
    if len(ids) <= block_size:
        raise HarnessError(f"data.block_size={block_size} is larger than the {what} text ({len(ids)} characters): "
                           f"a window needs block_size + 1 characters; lower data.block_size")


class RandomWindows:
    """Training batches: `batch_size` windows at random offsets, inputs `text[o : o+T]` and targets
    `text[o+1 : o+T+1]` for T = `block_size`, as nanoGPT's `get_batch`. Endless: the Trainer takes as
    many batches as it trains steps.

    The offsets of a pass are drawn from a CPU generator seeded by `(seed, epoch)` (`set_epoch`; in
    step-based training an "epoch" is one validation interval), so the same pass always sees the same
    windows: a resume that skips the batches already trained continues exactly. They are drawn in chunks
    of `CHUNK` batches and moved to the device in one copy. Under torchrun every rank draws the same
    `(world_size, batch_size)` offsets per batch and takes row `rank`: different windows on each rank,
    and the same global batch whatever the world size.
    """

    CHUNK = 64  # batches of offsets drawn (and copied to the device) at once

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, *, seed: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> None:
        check_fits(ids, block_size, "training")
        check_rank(rank, world_size)
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.ids = ids.to(self.device)
        self.window = torch.arange(block_size + 1, device=self.device)  # offsets within a window

    @property
    def tokens_per_sample(self) -> int:
        """Tokens a window trains on: what throughput counts."""
        return self.block_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = epoch_generator(self.seed, self.epoch)
        high = len(self.ids) - self.block_size  # offsets 0 .. len - T - 1: the last target is the last id
        while True:
            shape = (self.CHUNK, self.world_size, self.batch_size)
            starts = torch.randint(high, shape, generator=generator)[:, self.rank].to(self.device)
            for batch_starts in starts:
                windows = self.ids[batch_starts[:, None] + self.window]  # (B, T + 1) in one gather
                yield windows[:, :-1], windows[:, 1:]


class SequentialWindows:
    """Validation batches: the text cut into consecutive windows of `block_size`, inputs
    `text[kT : (k+1)T]`, targets one character later, so every character but the first is predicted
    exactly once. The last window is shorter: its missing targets are `IGNORE_INDEX` (padding), which
    the loss and the token metrics leave out.

    The windows come in one fixed shuffled order (the same in every pass, run and seed): the first N
    batches, what validation during training uses (`limit_val_batches`, nanoGPT's `eval_iters`), are a
    fixed sample spread over the whole text, and a pass over all batches covers it all. Under torchrun
    rank r takes every `world_size`-th window from r, without padding: token counts summed over ranks are exact.
    """

    ORDER_SEED = 0  # the windows' order: fixed, not trainer.seed, so every run validates on the same windows

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, *, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1) -> None:
        check_fits(ids, block_size, "validation")
        check_rank(rank, world_size)
        self.batch_size = batch_size
        self.device = torch.device(device)
        predicted = len(ids) - 1  # every character after the first
        windows = math.ceil(predicted / block_size)
        inputs = torch.zeros(windows * block_size, dtype=torch.int64)
        targets = torch.full((windows * block_size,), IGNORE_INDEX, dtype=torch.int64)
        inputs[:predicted], targets[:predicted] = ids[:-1], ids[1:]
        order = epoch_permutation(windows, self.ORDER_SEED, 0)[rank::world_size]
        self.inputs = inputs.view(windows, block_size)[order].to(self.device)
        self.targets = targets.view(windows, block_size)[order].to(self.device)
        self.tokens = int((self.targets != IGNORE_INDEX).sum())  # what this rank's full pass predicts

    def __len__(self) -> int:
        return math.ceil(len(self.inputs) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.inputs), self.batch_size):
            yield self.inputs[start : start + self.batch_size], self.targets[start : start + self.batch_size]
