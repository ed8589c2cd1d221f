"""The pairwise part of `harness.compare` on constructed per-sample correctness: which run is paired,
McNemar against scipy, Holm against statsmodels, and verdicts on both sides of the 5 % level."""

from __future__ import annotations

import pytest
import scipy.stats
import torch
from statsmodels.stats.multitest import multipletests

from harness.workflows.pairwise import format_p, pairs_table_rows, pairwise, verdict


def correctness(right: int, only_here: int, only_there: int, wrong: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two bool vectors over the same samples: both right on `right`, this one alone on `only_here`, the
    other alone on `only_there`, both wrong on `wrong`."""
    here = torch.tensor([True] * right + [True] * only_here + [False] * only_there + [False] * wrong)
    there = torch.tensor([True] * right + [False] * only_here + [True] * only_there + [False] * wrong)
    return here, there


def test_two_models_one_pair_no_correction_and_the_verdict_at_the_level() -> None:
    a, b = correctness(150, 10, 2, 38)  # McNemar: 10 against 2 discordant samples
    expected = scipy.stats.binomtest(10, 12).pvalue  # 0.0386
    (pair,) = pairwise(["A", "B"], {"A": {0: a}, "B": {0: b}}, seeds=[0])
    assert pair["p_value"] == pytest.approx(expected, rel=1e-12) and pair["p_holm"] == pair["p_value"]
    assert (pair["only_a_right"], pair["only_b_right"], pair["samples"]) == (10, 2, 200)
    assert pair["difference"] == pytest.approx(8 / 200) and pair["significant"]
    assert pair["verdict"] == "A better, p = 0.039"
    header, _ = pairs_table_rows([pair])
    assert "Holm p" not in header  # one test: nothing to correct
    # 9 against 3: p = 0.146, not significant
    a, b = correctness(150, 9, 3, 38)
    (pair,) = pairwise(["A", "B"], {"A": {0: a}, "B": {0: b}}, seeds=[0])
    assert pair["p_value"] == pytest.approx(scipy.stats.binomtest(9, 12).pvalue, rel=1e-12)
    assert pair["verdict"] == "no significant difference (p = 0.15)" and not pair["significant"]


def test_holm_over_three_models_can_turn_a_verdict() -> None:
    a, b = correctness(150, 10, 2, 38)
    c = b.clone()  # a third model, identical to B
    pairs = pairwise(["A", "B", "C"], {"A": {0: a}, "B": {0: b}, "C": {0: c}}, seeds=[0])
    raw = [p["p_value"] for p in pairs]
    reject, holm, _, _ = multipletests(raw, alpha=0.05, method="holm")
    assert [p["p_holm"] for p in pairs] == pytest.approx(holm.tolist(), rel=1e-12, abs=0)
    assert [p["significant"] for p in pairs] == reject.tolist() == [False, False, False]
    # A vs B alone would be "A better" (p = 0.039); among three pairs, Holm's 0.116 is not significant.
    assert pairs[0]["verdict"] == "no significant difference (p = 0.12)"
    assert pairs[2]["p_value"] == 1.0 and pairs[2]["verdict"] == "no significant difference (p = 1)"
    header, rows = pairs_table_rows(pairs)
    assert "Holm p" in header and rows[0][header.index("Holm p")] == f"{holm[0]:.3g}"


def test_seeds_pair_the_first_seed_both_finished_and_give_the_per_seed_differences() -> None:
    g = torch.Generator().manual_seed(0)
    runs = {name: {s: torch.rand(500, generator=g) < level + 0.01 * s for s in (0, 1, 2)}
            for name, level in (("A", 0.9), ("B", 0.8))}
    del runs["A"][0]  # A's seed 0 failed: the pair is tested on seed 1
    (pair,) = pairwise(["A", "B"], runs, seeds=[0, 1, 2])
    assert (pair["seed_a"], pair["seed_b"]) == (1, 1)
    only_a = int((runs["A"][1] & ~runs["B"][1]).sum())
    only_b = int((runs["B"][1] & ~runs["A"][1]).sum())
    assert pair["p_value"] == pytest.approx(scipy.stats.binomtest(only_a, only_a + only_b).pvalue, rel=1e-9)
    differences = [float(runs["A"][s].double().mean() - runs["B"][s].double().mean()) for s in (1, 2)]
    over = pair["over_seeds"]
    assert over["seeds"] == [1, 2] and over["differences"] == pytest.approx(differences)
    expected = scipy.stats.t.interval(0.95, 1, loc=sum(differences) / 2, scale=scipy.stats.sem(differences))
    assert over["t_interval"] == pytest.approx(expected, rel=1e-9)


def test_a_checkpoint_pairs_with_any_seed_and_a_model_without_runs_is_not_compared() -> None:
    a, b = correctness(50, 30, 0, 20)
    pairs = pairwise(["A", "ckpt", "failed"], {"A": {3: a, 4: b}, "ckpt": {None: b}}, seeds=[3, 4])
    assert (pairs[0]["seed_a"], pairs[0]["seed_b"]) == (3, None) and pairs[0]["verdict"].startswith("A better")
    assert pairs[0]["over_seeds"] is None  # a checkpoint has no seeds to pair with
    assert [p["verdict"] for p in pairs[1:]] == ["not compared: failed has no finished run"] * 2
    assert pairs[0]["holm_family"] == 1  # only the pair tested counts in the Holm family


def test_p_values_read_as_written() -> None:
    assert [format_p(p) for p in (0.0004, 0.001, 0.0412, 0.41, 1.0)] == ["< 0.001", "= 0.001", "= 0.041", "= 0.41",
                                                                         "= 1"]
    assert verdict("mlp", "cnn", -0.012, 1e-9) == "cnn better, p < 0.001"
    assert verdict("mlp", "cnn", 0.004, 0.05) == "mlp better, p = 0.05"  # at the level: significant, as Holm's rule
    assert verdict("mlp", "cnn", 0.004, 0.0501) == "no significant difference (p = 0.05)"
