"""CalibrationError against torchmetrics' ``MulticlassCalibrationError`` and BrierScore against
scikit-learn's ``brier_score_loss``, the independent oracles.

torchmetrics computes in float32, so the comparisons with it allow float32 rounding.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassCalibrationError

from harness.metrics import BrierScore, CalibrationError, Metric, classification

SEEDS = [0, 1, 2]
NORMS = ["l1", "l2", "max"]


def random_scores(seed: int, n: int = 500, num_classes: int = 5, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, num_classes, (n,), generator=gen)
    return logits, target


def feed(metric: Metric, preds: torch.Tensor, target: torch.Tensor, seed: int = 0) -> Metric:
    """Uneven batches, one of them empty."""
    rng = np.random.default_rng(seed)
    cuts = sorted(set(rng.integers(1, len(target), size=4).tolist()))
    for a, b in itertools.pairwise([0, 0, *cuts, len(target)]):
        metric.update(preds[a:b], target[a:b])
    return metric


def torchmetrics_ce(probs: torch.Tensor, target: torch.Tensor, n_bins: int, norm: str) -> float:
    oracle = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm=norm)
    oracle.update(probs, target)
    return oracle.compute().item()


# --- calibration error --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [1, 5, 15, 40])
def test_calibration_error_matches_torchmetrics(seed, norm, n_bins):
    logits, target = random_scores(seed)
    probs = logits.softmax(dim=1).float()
    metric = feed(CalibrationError(5, n_bins=n_bins, norm=norm), probs, target, seed)
    assert metric.compute().item() == pytest.approx(torchmetrics_ce(probs, target, n_bins, norm), abs=2e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_logits_go_through_softmax_as_in_torchmetrics(norm):
    logits, target = random_scores(3)
    probs = logits.softmax(dim=1)
    from_logits = feed(CalibrationError(5, norm=norm), logits.float(), target).compute()
    from_probs = feed(CalibrationError(5, norm=norm), probs, target).compute()
    assert from_logits.item() == pytest.approx(from_probs.item(), abs=1e-6)
    assert from_logits.item() == pytest.approx(torchmetrics_ce(logits.float(), target, 15, norm), abs=2e-6)


def test_confidence_of_exactly_one_falls_in_the_last_bin():
    # Two samples of confidence 1.0 (one wrong) and two of 0.95 (both right), 10 bins.
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.95, 0.05], [0.05, 0.95]], dtype=torch.float64)
    target = torch.tensor([0, 0, 0, 1])
    metric = CalibrationError(2, n_bins=10)
    metric.update(probs, target)
    # Last bin [0.9, 1]: 4 samples, accuracy 3/4, mean confidence 0.975.
    assert metric.compute().item() == pytest.approx(abs(0.75 - 0.975), abs=1e-15)
    # torchmetrics keeps 1.0 apart: |0.5 - 1| * 2/4 + |1 - 0.95| * 2/4.
    assert torchmetrics_ce(probs.float(), target, 10, "l1") == pytest.approx(0.5 * 0.5 + 0.05 * 0.5, abs=1e-6)


def test_binary_probabilities_use_the_top_1_confidence():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(200, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (200,), generator=gen)
    for norm in NORMS:
        one_column = feed(CalibrationError(2, norm=norm), p, target).compute()
        two_columns = feed(CalibrationError(2, norm=norm), torch.stack([1 - p, p], dim=1), target).compute()
        torch.testing.assert_close(one_column, two_columns, rtol=0, atol=1e-15)


def test_calibration_error_by_hand():
    # 3 classes, 4 bins. Confidences 0.9 (right), 0.8 (wrong), 0.4 (right): bins 3, 3, 1.
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.4, 0.3, 0.3]], dtype=torch.float64)
    target = torch.tensor([0, 0, 0])
    ece, mce = CalibrationError(3, n_bins=4), CalibrationError(3, n_bins=4, norm="max")
    ece.update(probs, target)
    mce.update(probs, target)
    # bin 3: accuracy 1/2, confidence 0.85, gap 0.35, share 2/3; bin 1: accuracy 1, confidence 0.4, gap 0.6.
    assert ece.compute().item() == pytest.approx(0.35 * 2 / 3 + 0.6 / 3, abs=1e-15)
    assert mce.compute().item() == pytest.approx(0.6, abs=1e-15)


@pytest.mark.parametrize("norm", NORMS)
def test_calibration_error_of_nothing_is_nan(norm):
    assert torch.isnan(CalibrationError(3, norm=norm).compute())


# --- Brier score ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_multiclass_matches_sklearn(seed):
    logits, target = random_scores(seed)
    target[target == 2] = 4  # class 2 absent: its column still counts, against 0
    probs = logits.softmax(dim=1)
    expected = skm.brier_score_loss(target.numpy(), probs.numpy(), labels=range(5))
    assert feed(BrierScore(5), probs, target, seed).compute().item() == pytest.approx(expected, rel=1e-12)
    assert feed(BrierScore(5), logits, target, seed).compute().item() == pytest.approx(expected, rel=1e-12)
    # The sum over classes (Brier's definition), by hand:
    by_hand = ((probs - torch.nn.functional.one_hot(target, 5)) ** 2).sum(dim=1).mean().item()
    assert expected == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_binary_matches_sklearn(seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(301, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (301,), generator=gen)
    expected = skm.brier_score_loss(target.numpy(), p.numpy())
    assert feed(BrierScore(2), p, target, seed).compute().item() == pytest.approx(expected, rel=1e-12)
    two_columns = torch.stack([1 - p, p], dim=1)
    assert feed(BrierScore(2), two_columns, target, seed).compute().item() == pytest.approx(expected, rel=1e-12)
    all_ones = torch.ones_like(target)  # a single class present
    expected_ones = skm.brier_score_loss(all_ones.numpy(), p.numpy(), labels=[0, 1])
    assert feed(BrierScore(2), p, all_ones).compute().item() == pytest.approx(expected_ones, rel=1e-12)


def test_brier_of_nothing_is_nan():
    assert torch.isnan(BrierScore(3).compute())


# --- chunks, out-of-range targets, arguments ----------------------------------------------------------


@st.composite
def scored_data(draw):
    """Softmax probabilities of drawn logits, labels, and chunk boundaries (empty chunks allowed)."""
    c = draw(st.integers(2, 5))
    n = draw(st.integers(0, 40))
    target = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=torch.long)
    cells = draw(st.lists(st.floats(-6, 6), min_size=n * c, max_size=n * c))
    probs = torch.tensor(cells, dtype=torch.float64).reshape(n, c).softmax(dim=1)
    return c, probs, target, sorted(draw(st.lists(st.integers(0, n), max_size=5)))


@settings(max_examples=40, deadline=None)
@given(scored_data())
def test_any_chunking_equals_one_update(case):
    c, probs, target, cuts = case
    builds = [lambda: BrierScore(c), *(lambda norm=norm: CalibrationError(c, n_bins=7, norm=norm) for norm in NORMS)]
    for build in builds:
        whole, chunked = build(), build()
        whole.update(probs, target)
        for a, b in itertools.pairwise([0, *cuts, len(target)]):
            chunked.update(probs[a:b], target[a:b])
        torch.testing.assert_close(chunked.compute(), whole.compute(), rtol=1e-12, atol=1e-12, equal_nan=True)
        counts = "count" if isinstance(whole, CalibrationError) else "total"
        assert torch.equal(getattr(chunked, counts), getattr(whole, counts))


@pytest.mark.parametrize("build", [lambda: BrierScore(3), lambda: CalibrationError(3, n_bins=4)])
def test_out_of_range_targets_are_never_counted(build, monkeypatch):
    logits, target = random_scores(0, n=60, num_classes=3)
    clean = feed(build(), logits, target).compute()
    metric = feed(build(), logits, target)
    with pytest.raises(ValueError, match=r"target has 2 labels outside \[0, 3\): lowest -2, highest 5; the batch"):
        metric.update(logits[:3], torch.tensor([0, 5, -2]))
    torch.testing.assert_close(metric.compute(), clean, rtol=0, atol=0)
    monkeypatch.setattr(classification, "_check_eagerly", lambda device: False)  # the GPU path
    metric.update(logits[:2], torch.tensor([3, 1]))
    with pytest.raises(ValueError, match=r"target has 1 label outside \[0, 3\): 3; the batches holding them"):
        metric.compute()
    metric.reset()
    torch.testing.assert_close(feed(metric, logits, target).compute(), clean, rtol=0, atol=0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CalibrationError(3, n_bins=0), "n_bins"),
        (lambda: CalibrationError(3, norm="l3"), "norm must be one of"),
        (lambda: BrierScore(1), "num_classes"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_repr():
    assert repr(CalibrationError(4)) == "CalibrationError(num_classes=4, n_bins=15, norm='l1', device=cpu)"
    assert repr(BrierScore(4)) == "BrierScore(num_classes=4, device=cpu)"
