"""Intervals and tests of harness.stats against independent oracles: scipy's exact binomial test for
McNemar, the Wilson formula on known values and against a direct root-finding of its definition,
scikit-learn for every bootstrapped metric, a coverage check of the nominal 95 %, scipy's Student t
for the t interval, scipy's paired bootstrap, and statsmodels' Holm adjustment."""

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
    holm_adjust,
    mcnemar_test,
    paired_bootstrap_ci,
    paired_difference_ci,
    paired_ratio_bootstrap,
    student_t_cdf,
    student_t_quantile,
    t_interval,
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


def test_paired_difference_of_correctness_is_the_paired_accuracy_bootstrap() -> None:
    # Bool correctness vectors give the interval paired_bootstrap_ci gives from the labels: the same resamples.
    g = torch.Generator().manual_seed(7)
    target = torch.randint(0, 10, (2000,), generator=g)
    preds_a = torch.where(torch.rand(2000, generator=g) < 0.93, target, (target + 3) % 10)
    preds_b = torch.where(torch.rand(2000, generator=g) < 0.90, target, (target + 1) % 10)
    by_labels = paired_bootstrap_ci(Accuracy(10), preds_a, preds_b, target, n_resamples=300, seed=4)
    by_correctness = paired_difference_ci(preds_a == target, preds_b == target, n_resamples=300, seed=4)
    assert by_correctness == pytest.approx(by_labels, abs=1e-12)
    # scipy's own paired percentile bootstrap (other random draws): the same interval within Monte Carlo error.
    a, b = (preds_a == target).numpy().astype(float), (preds_b == target).numpy().astype(float)
    scipy_ci = scipy.stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=True,
                                     method="percentile", n_resamples=4000, rng=np.random.default_rng(0)
                                     ).confidence_interval
    ours = paired_difference_ci(preds_a == target, preds_b == target, n_resamples=4000, seed=0)
    assert ours == pytest.approx((scipy_ci.low, scipy_ci.high), abs=0.002)
    assert paired_difference_ci(preds_a == target, preds_a == target) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same samples"):
        paired_difference_ci(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_paired_ratio_bootstrap_over_clusters_equals_scipys_paired_bootstrap() -> None:
    """Per-window loss sums of two models over windows of unequal length: the point estimate is the ratio
    of sums, the interval scipy's paired percentile bootstrap of the same statistic (other random draws:
    within Monte Carlo error), and the p-value follows the side the interval lies on."""
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(20, 65, (400,), generator=g).double()
    difficulty = torch.rand(400, generator=g, dtype=torch.float64) * 2 + 1  # windows differ: a shared effect
    sums_a = counts * difficulty + torch.randn(400, generator=g, dtype=torch.float64) * 3
    sums_b = counts * difficulty * 0.99 + torch.randn(400, generator=g, dtype=torch.float64) * 3
    ours = paired_ratio_bootstrap(sums_a, sums_b, counts, n_resamples=4000, seed=0)
    assert ours["difference"] == pytest.approx(float((sums_a - sums_b).sum() / counts.sum()), rel=1e-12)
    a, b, n = sums_a.numpy(), sums_b.numpy(), counts.numpy()
    scipy_ci = scipy.stats.bootstrap((a, b, n), lambda x, y, m, axis: (x - y).sum(axis) / m.sum(axis), paired=True,
                                     method="percentile", n_resamples=4000, rng=np.random.default_rng(0)
                                     ).confidence_interval
    width = scipy_ci.high - scipy_ci.low
    assert (ours["low"], ours["high"]) == pytest.approx((scipy_ci.low, scipy_ci.high), abs=0.05 * width)
    # Paired: the windows' shared difficulty cancels; unpaired resampling would give a far wider interval.
    assert ours["high"] - ours["low"] < 0.5 * float(2 * 1.96 * (sums_a / counts).std() / math.sqrt(400))
    assert ours["low"] > 0 and ours["p_value"] < 0.01  # A's loss is higher: the interval and p agree
    flipped = paired_ratio_bootstrap(sums_b, sums_a, counts, n_resamples=4000, seed=0)
    assert (flipped["low"], flipped["high"], flipped["p_value"]) == pytest.approx(
        (-ours["high"], -ours["low"], ours["p_value"]), abs=1e-12)
    same = paired_ratio_bootstrap(sums_a, sums_a, counts)
    assert (same["difference"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same clusters"):
        paired_ratio_bootstrap(sums_a, sums_b[:3], counts)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 100, 1000, 2.5])
def test_student_t_quantile_and_cdf_equal_scipy(df: float) -> None:
    for p in (0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.025, 1e-4):
        assert student_t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-10, abs=1e-12)
    for t in (-40.0, -2.3, -0.1, 0.0, 0.7, 1.96, 12.7, 300.0):
        assert student_t_cdf(t, df) == pytest.approx(scipy.stats.t.cdf(t, df), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("values", [[0.9871, 0.9880], [0.9737, 0.95, 1.0, 0.9565, 0.9783, 0.9333, 1.0, 0.9778,
                                                       0.9556, 1.0], [3.0, 3.0, 3.0], list(range(30))])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_t_interval_equals_scipy(values: list[float], confidence: float) -> None:
    sem = scipy.stats.sem(values) if len(set(values)) > 1 else 0.0
    if sem == 0.0:  # scipy gives NaN bounds for a zero scale; the interval is the point
        expected = (float(np.mean(values)),) * 2
    else:
        expected = scipy.stats.t.interval(confidence, len(values) - 1, loc=np.mean(values), scale=sem)
    assert t_interval(values, confidence) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_t_interval_needs_two_values() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([0.98])


@pytest.mark.parametrize("seed", range(6))
def test_holm_equals_statsmodels(seed: int) -> None:
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 12))
    p = rng.uniform(0, 0.1, m) ** rng.uniform(0.5, 3)  # many small, some equal after rounding
    p = np.round(p, 3) if seed % 2 else p
    reject, expected, _, _ = multipletests(p, alpha=0.05, method="holm")
    adjusted = holm_adjust(p.tolist())
    assert adjusted == pytest.approx(expected.tolist(), rel=1e-12, abs=0)
    assert [a <= 0.05 for a in adjusted] == reject.tolist()


def test_holm_on_a_worked_example() -> None:
    # Holm (1979): sorted p 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 -> 0.04, 0.06, 0.06 (kept monotone), 0.06
    assert holm_adjust([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm_adjust([0.5]) == [0.5] and holm_adjust([0.6, 0.7]) == [1.0, 1.0] and holm_adjust([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.1, 1.5])

def _scores(classes: int, n: int, seed: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities that rank the true class high, often not first; rounded logits give tied scores."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) + 1.5 * torch.nn.functional.one_hot(target, classes)
    if ties:
        logits = (logits * 2).round() / 2
    return logits.softmax(dim=1).double(), target


@pytest.mark.parametrize(("name", "classes", "average", "ties"), [
    ("auroc", 2, "macro", True), ("auroc", 4, "macro", False), ("auroc", 4, "weighted", True),
    ("ap", 2, "macro", False), ("ap", 4, "macro", True), ("ap", 4, "weighted", False)])
def test_score_bootstrap_equals_resampling_by_hand_with_sklearn(name: str, classes: int, average: str,
                                                                ties: bool) -> None:
    # AUROC and average precision take the weighted pass (every resample at once); each resample
    # scored here on its own by scikit-learn must give the same values, so the same interval.
    from harness.metrics import AUROC, AveragePrecision

    probs, target = _scores(classes, 150, seed=5, ties=ties)
    metric = (AUROC if name == "auroc" else AveragePrecision)(classes, average=average)
    low, high = bootstrap_ci(metric, probs, target, n_resamples=60, seed=7)
    indices = torch.randint(0, 150, (60, 150), generator=torch.Generator().manual_seed(7)).numpy()
    y, p = target.numpy(), probs.numpy()

    def sk(i: np.ndarray) -> float:
        if classes == 2:
            fn = skm.roc_auc_score if name == "auroc" else skm.average_precision_score
            return fn(y[i], p[i, 1])
        if name == "auroc":
            return skm.roc_auc_score(y[i], p[i], multi_class="ovr", average=average, labels=range(classes))
        return skm.average_precision_score(np.eye(classes)[y[i]], p[i], average=average)

    values = np.array([sk(i) for i in indices])
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_calibration_bootstrap_equals_the_metric_on_each_resample(norm: str) -> None:
    from harness.metrics import CalibrationError
    from harness.stats.intervals import _resample_indices
    from harness.stats.score_bootstrap import weighted_resample_values

    probs, target = _scores(5, 400, seed=6, ties=True)
    metric = CalibrationError(5, n_bins=10, norm=norm)
    indices = _resample_indices(400, 30, seed=2, device=target.device)
    weighted = weighted_resample_values(metric, probs, target, indices)
    one_by_one = []
    for rows in indices:  # the metric's own update / compute on each resample
        metric.reset()
        metric.update(probs[rows], target[rows])
        one_by_one.append(metric.compute().item())
    assert weighted.tolist() == pytest.approx(one_by_one, abs=1e-12)
    # torchmetrics on the first resample (its bins are the same away from a confidence of exactly 1)
    from torchmetrics.classification import MulticlassCalibrationError

    oracle = MulticlassCalibrationError(num_classes=5, n_bins=10, norm=norm)(probs[indices[0]], target[indices[0]])
    assert weighted[0].item() == pytest.approx(oracle.item(), abs=1e-6)
