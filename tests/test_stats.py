"""Intervals and tests of harness.stats against independent oracles: scipy's exact binomial test for
McNemar, the Wilson formula on known values and against a direct root-finding of its definition,
scikit-learn for every bootstrapped metric, and a coverage check of the nominal 95 %."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics as skm
import torch

from harness.metrics import Accuracy, F1Score, MeanSquaredError, Precision, Recall
from harness.stats import (
    batched_precision_recall_f1,
    bootstrap_ci,
    confmat_bootstrap,
    mcnemar_test,
    paired_bootstrap_ci,
    wilson_interval,
)


def test_wilson_interval_on_known_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 81 of 263, 95 %: 0.2553 to 0.3662
    low, high = wilson_interval(81, 263, 0.95)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # The interval is where |p_hat - p| = z * sqrt(p (1 - p) / n): solve that directly.
    z = scipy.stats.norm.ppf(0.975)
    for correct, total in [(9931, 10000), (0, 20), (20, 20), (7, 13)]:
        low, high = wilson_interval(correct, total)
        p_hat = correct / total
        for bound in (low, high):
            if 0 < bound < 1:
                assert abs(p_hat - bound) == pytest.approx(z * math.sqrt(bound * (1 - bound) / total), rel=1e-9)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_equals_scipy_exact_binomial_test(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(500, generator=g) < 0.8
    b = torch.rand(500, generator=g) < 0.75 + 0.02 * seed
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    expected = scipy.stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert mcnemar_test(a, b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_test(a, a) == 1.0


def _sklearn_value(name: str, average: str, y: np.ndarray, p: np.ndarray, classes: int) -> float:
    labels = list(range(classes))
    if name == "accuracy":
        return skm.accuracy_score(y, p)
    fn = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[name]
    return fn(y, p, labels=labels, average=average, zero_division=0)


@pytest.mark.parametrize(("name", "average"), [("accuracy", None), ("precision", "macro"), ("recall", "weighted"),
                                               ("f1", "macro"), ("f1", "micro")])
def test_bootstrap_equals_resampling_by_hand_with_sklearn(name: str, average: str | None) -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (300,), generator=g)
    preds = torch.where(torch.rand(300, generator=g) < 0.7, target, torch.randint(0, 4, (300,), generator=g))
    metric = {"accuracy": lambda: Accuracy(4), "precision": lambda: Precision(4, average=average),
              "recall": lambda: Recall(4, average=average), "f1": lambda: F1Score(4, average=average)}[name]()
    low, high = bootstrap_ci(metric, preds, target, n_resamples=200, seed=3)
    # The same resamples, scored one by one by scikit-learn.
    indices = torch.randint(0, 300, (200, 300), generator=torch.Generator().manual_seed(3))
    y, p = target.numpy(), preds.numpy()
    values = np.array([_sklearn_value(name, average, y[i], p[i], 4) for i in indices.numpy()])
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    point = _sklearn_value(name, average, y, p, 4)
    assert low <= point <= high


def test_the_generic_path_and_the_confusion_matrix_path_agree() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randn(200, generator=g)
    preds = target + 0.3 * torch.randn(200, generator=g)
    low, high = bootstrap_ci(MeanSquaredError(), preds, target, n_resamples=100, seed=0)
    indices = torch.randint(0, 200, (100, 200), generator=torch.Generator().manual_seed(0))
    values = ((preds[indices] - target[indices]) ** 2).mean(1).double()
    assert (low, high) == pytest.approx(tuple(torch.quantile(values, torch.tensor([0.025, 0.975],
                                                                                   dtype=torch.float64)).tolist()))


def test_confmat_bootstrap_matches_sample_bootstrap_in_distribution() -> None:
    # Resampling the samples and drawing cells from the confusion matrix are the same distribution:
    # their intervals agree to within Monte Carlo error.
    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, 3, (2000,), generator=g)
    preds = torch.where(torch.rand(2000, generator=g) < 0.8, target, torch.randint(0, 3, (2000,), generator=g))
    by_samples = bootstrap_ci(F1Score(3, average="macro"), preds, target, n_resamples=2000, seed=0)
    confmat = torch.bincount(target * 3 + preds, minlength=9).view(3, 3)
    by_cells = confmat_bootstrap(confmat, lambda cm: batched_precision_recall_f1(cm, "macro")[2],
                                 n_resamples=2000, seed=1)
    assert by_cells == pytest.approx(by_samples, abs=0.004)


def test_paired_bootstrap_of_a_difference() -> None:
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 10, (3000,), generator=g)
    better = torch.where(torch.rand(3000, generator=g) < 0.95, target, (target + 1) % 10)
    worse = torch.where(torch.rand(3000, generator=g) < 0.90, target, (target + 1) % 10)
    low, high = paired_bootstrap_ci(Accuracy(10), better, worse, target, n_resamples=500, seed=0)
    diff = (better == target).double().mean() - (worse == target).double().mean()
    assert 0 < low < diff < high
    same_low, same_high = paired_bootstrap_ci(Accuracy(10), better, better, target, n_resamples=100, seed=0)
    assert same_low == same_high == 0.0


def test_nominal_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    # Wilson: the exact coverage, summed over every possible number correct (no simulation noise).
    for n, p in [(100, 0.5), (300, 0.9), (1000, 0.99), (10000, 0.9931)]:
        pmf = scipy.stats.binom.pmf(np.arange(n + 1), n, p)
        covered = sum(pmf[k] for k in range(n + 1) if wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1])
        assert 0.93 <= covered <= 0.97, (n, p, covered)
    # The bootstrap: 500 simulated test sets of 300 samples from a classifier of known accuracy 0.9.
    g = torch.Generator().manual_seed(6)
    truth, sets = 0.9, 500
    correct = torch.rand(sets, 300, generator=g) < truth
    target = torch.zeros(300, dtype=torch.long)
    boot = [bootstrap_ci(Accuracy(2), (~c).long(), target, n_resamples=400, seed=i) for i, c in enumerate(correct)]
    covered = sum(low <= truth <= high for low, high in boot) / sets
    assert 0.92 <= covered <= 0.97, covered  # the percentile bootstrap runs a little short at n = 300


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        bootstrap_ci(Accuracy(3), torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.5)
    with pytest.raises(ValueError, match="same samples"):
        mcnemar_test(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
