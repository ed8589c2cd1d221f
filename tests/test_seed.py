"""`harness.core.seed`: deterministic mode as asked (not as the last run left it), the seeds of torchrun's
ranks, and which RNG states each rank resumes with."""

from __future__ import annotations

import random

import numpy as np
import torch

from harness.core.seed import get_rng_state, rank_seed, seed_everything, seed_rank, set_rank_rng_state


def test_deterministic_mode_is_set_both_ways() -> None:
    """A sweep trial with trainer.deterministic=true must not leave the next trial deterministic."""
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_every_rank_gets_its_own_seed_the_same_on_every_run() -> None:
    seeds = {(seed, rank): rank_seed(seed, rank) for seed in range(4) for rank in range(8)}
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, rank) pairs share a stream
    assert all(0 <= s < 2**32 for s in seeds.values())  # NumPy's range
    assert rank_seed(3, 1) == rank_seed(3, 1)
    seed_rank(3, 1)
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    seed_rank(3, 1)
    assert (random.random(), float(np.random.rand())) == draws[:2] and torch.equal(torch.rand(3), draws[2])


def states_of_two_ranks() -> dict:
    """A checkpoint as rank 0 of a 2-rank run writes it: rank 0's states, and every rank's."""
    seed_everything(0)
    rank0 = get_rng_state()
    seed_rank(0, 1)
    torch.rand(5)  # rank 1 has drawn something of its own
    rank1 = get_rng_state()
    return {"rng": rank0, "rng_per_rank": [rank0, rank1]}


def test_each_rank_resumes_its_own_stream() -> None:
    state = states_of_two_ranks()
    expected = {}
    for rank in (0, 1):
        torch.set_rng_state(state["rng_per_rank"][rank]["torch"])
        expected[rank] = torch.rand(4)
    for rank in (0, 1):
        torch.manual_seed(123)  # a fresh process's stream, overwritten by the restore
        set_rank_rng_state(state, rank, world_size=2)
        assert torch.equal(torch.rand(4), expected[rank]), rank


def test_a_rank_the_checkpoint_has_no_state_for_gets_a_distinct_repeatable_stream() -> None:
    """Resumed on 3 ranks (or from a single-process checkpoint): rank 0 resumes exactly, the others draw
    streams of their own, the same on every resume."""
    state = states_of_two_ranks()
    draws = {}
    for rank in (0, 1, 2):
        set_rank_rng_state(state, rank, world_size=3)
        draws[rank] = torch.rand(4)
        set_rank_rng_state(state, rank, world_size=3)
        assert torch.equal(torch.rand(4), draws[rank])
    torch.set_rng_state(state["rng"]["torch"])
    assert torch.equal(draws[0], torch.rand(4))
    assert not torch.equal(draws[1], draws[0]) and not torch.equal(draws[2], draws[1])
