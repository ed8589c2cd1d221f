"""Seeding, determinism and the RNG states a checkpoint carries for an exact resume."""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    deterministic=True also asks torch for deterministic kernels (an op without one raises) and
    turns off cuDNN autotuning; it can cost speed on CUDA. On CPU runs are repeatable without it.
    deterministic=False turns torch's deterministic mode off: a run in the same process (a sweep's
    next trial, a compared model) gets the mode it asks for, not the one the run before it left.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before the first matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank `rank` of a torchrun job reseeds from: a hash of `(seed, rank)` (32 bits, NumPy's
    limit), so no rank shares a stream with another, nor with the rank of another seed."""
    digest = hashlib.blake2b(f"rank/{seed}/{rank}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def seed_rank(seed: int, rank: int) -> None:
    """Reseed Python, NumPy and torch (CPU and CUDA) from `rank_seed(seed, rank)`.

    Called under torchrun once the model is built (its initial weights come from `seed`, the same on every
    rank): each rank then draws its own dropout masks and other random ops, not a copy of rank 0's."""
    derived = rank_seed(seed, rank)
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def get_rng_state() -> dict[str, Any]:
    """All RNG states, as plain data and tensors (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.copy()), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rank_rng_state(state: dict[str, Any], rank: int, world_size: int) -> None:
    """Restore this rank's RNGs from a checkpoint `state` for an exact resume.

    Rank 0 restores `state["rng"]`. Rank r >= 1 restores its own saved states (`state["rng_per_rank"][r]`,
    written by a run of the same world size); when the checkpoint has none for it (another world size,
    a single-process checkpoint), it restores rank 0's and reseeds from a number drawn from them and its
    rank: distinct per rank and repeatable, though not the stream an uninterrupted run would have drawn."""
    per_rank = state.get("rng_per_rank")
    if rank > 0 and per_rank is not None and len(per_rank) == world_size:
        set_rng_state(per_rank[rank])
        return
    set_rng_state(state["rng"])
    if rank > 0:
        seed_rank(int(torch.randint(2**31, (1,))), rank)


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _as_tuple(value: Any) -> Any:
    # random.setstate wants tuples all the way down; serialisation may hand back lists.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
