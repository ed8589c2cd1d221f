"""AUROC and average precision against scikit-learn, the independent oracle.

scikit-learn's ``roc_auc_score`` (binary, and ``multi_class="ovr"`` macro / weighted) and
``average_precision_score`` (binary, and per class on one-hot targets, then averaged) on the same
probabilities. Where the harness leaves a class out (no positives, or for AUROC no negatives:
NaN, outside the averages), the oracle is scikit-learn's value of each class that has one, averaged
here; scikit-learn itself warns and gives NaN for such a class (AUROC, so its macro average is NaN) or
gives it 0 (average precision).
"""

from __future__ import annotations

import itertools
import threading
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
import torch.distributed as dist
from hang_guard import HANG_GUARD_S
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning

from harness.metrics import AUROC, AveragePrecision, Metric, classification
from harness.metrics import base as metrics_base
from harness.metrics import functional as F

SEEDS = [0, 1, 2]
RANKING = [AUROC, AveragePrecision]
SK_BINARY = {AUROC: skm.roc_auc_score, AveragePrecision: skm.average_precision_score}


def random_scores(seed: int, n: int = 400, num_classes: int = 5):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=gen, dtype=torch.float64) * 2
    target = torch.randint(0, num_classes, (n,), generator=gen)
    return logits, target


def feed(metric: Metric, preds: torch.Tensor, target: torch.Tensor, seed: int = 0) -> Metric:
    """Uneven batches, one of them empty."""
    rng = np.random.default_rng(seed)
    cuts = sorted(set(rng.integers(1, len(target), size=4).tolist())) if len(target) > 1 else []
    for a, b in itertools.pairwise([0, 0, *cuts, len(target)]):
        metric.update(preds[a:b], target[a:b])
    return metric


def sk_per_class(metric_cls, target: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """scikit-learn's binary score of each class against the rest; NaN where the harness has none."""
    values = []
    for c in range(probs.shape[1]):
        positive = target == c
        undefined = not positive.any() or (metric_cls is AUROC and positive.all())
        values.append(np.nan if undefined else SK_BINARY[metric_cls](positive, probs[:, c]))
    return np.array(values)


def sk_average(values: np.ndarray, target: np.ndarray, average: str) -> float | np.ndarray:
    if average == "none":
        return values
    defined = ~np.isnan(values)
    if not defined.any():
        return np.nan
    support = np.bincount(target, minlength=len(values)).astype(float)
    weights = np.ones_like(values) if average == "macro" else support
    return float(np.average(values[defined], weights=weights[defined]))


def assert_close(actual: torch.Tensor, expected, rtol: float = 1e-12, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(actual.numpy(), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


# --- multiclass, one class against the rest ---------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_auroc_matches_sklearn_ovr(seed, average):
    logits, target = random_scores(seed)
    probs = logits.softmax(dim=1)
    expected = skm.roc_auc_score(target.numpy(), probs.numpy(), multi_class="ovr", average=average)
    assert_close(feed(AUROC(5, average=average), probs, target, seed).compute(), expected)
    # Logits go through the softmax first (a batch with values outside [0, 1]): the same figure.
    assert_close(feed(AUROC(5, average=average), logits, target, seed).compute(), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["macro", "weighted", "none"])
def test_average_precision_matches_sklearn_one_vs_rest(seed, average):
    logits, target = random_scores(seed)
    probs = logits.softmax(dim=1)
    onehot = np.eye(5)[target.numpy()]
    expected = skm.average_precision_score(onehot, probs.numpy(), average=None if average == "none" else average)
    assert_close(feed(AveragePrecision(5, average=average), probs, target, seed).compute(), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_per_class_matches_sklearn(seed):
    logits, target = random_scores(seed)
    probs = logits.softmax(dim=1)
    expected = [skm.roc_auc_score(target.numpy() == c, probs[:, c].numpy()) for c in range(5)]
    assert_close(feed(AUROC(5, average="none"), probs, target, seed).compute(), expected)


@pytest.mark.parametrize("metric_cls", RANKING)
@pytest.mark.parametrize("average", ["macro", "weighted", "none"])
def test_ties_in_scores_match_sklearn(metric_cls, average):
    # Scores on a coarse grid: many ties within and across classes, thresholds shared by blocks.
    logits, target = random_scores(3, n=300, num_classes=4)
    probs = (logits.softmax(dim=1) * 8).round() / 8
    metric = feed(metric_cls(4, average=average), probs, target, seed=3)
    per_class = sk_per_class(metric_cls, target.numpy(), probs.numpy())
    assert_close(metric.compute(), sk_average(per_class, target.numpy(), average))
    if metric_cls is AUROC and average != "none":
        # sklearn's rows need not sum to 1 here (rounded), so it is asked class by class above;
        # its own averaging agrees on this data, where every class is present.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_column = [skm.roc_auc_score(target.numpy() == c, probs[:, c].numpy()) for c in range(4)]
        assert not np.isnan(per_column).any()


@pytest.mark.parametrize("metric_cls", RANKING)
@pytest.mark.parametrize("average", ["macro", "weighted", "none"])
def test_a_class_absent_from_the_targets_is_nan_and_left_out_of_the_average(metric_cls, average):
    logits, target = random_scores(4, n=200, num_classes=5)
    target[target == 3] = 0  # class 3 never occurs: no positives, no AUROC, no average precision
    probs = logits.softmax(dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the harness gives NaN without a warning
        result = feed(metric_cls(5, average=average), probs, target).compute()
    per_class = sk_per_class(metric_cls, target.numpy(), probs.numpy())
    assert np.isnan(per_class[3])
    np.testing.assert_allclose(result.numpy(), sk_average(per_class, target.numpy(), average), rtol=1e-12)
    if average == "none":
        assert torch.isnan(result[3]) and not torch.isnan(result[[0, 1, 2, 4]]).any()
    if metric_cls is AUROC:  # sklearn's per-class values agree, NaN included; its macro is NaN
        with pytest.warns(UndefinedMetricWarning):
            sk_none = skm.roc_auc_score(target.numpy(), probs.numpy(), multi_class="ovr", labels=range(5),
                                        average=None)
        np.testing.assert_allclose(sk_per_class(AUROC, target.numpy(), probs.numpy()), sk_none, rtol=1e-12)


@pytest.mark.parametrize("average", ["macro", "weighted", "none"])
def test_a_single_class_present(average):
    logits, _ = random_scores(5, n=50, num_classes=4)
    probs = logits.softmax(dim=1)
    target = torch.full((50,), 2)
    auroc = feed(AUROC(4, average=average), probs, target).compute()
    ap = feed(AveragePrecision(4, average=average), probs, target).compute()
    # AUROC needs both positives and negatives: no class has them. Class 2 is all positives:
    # precision 1 at every threshold, so its average precision is 1 (sklearn's, too).
    assert torch.isnan(auroc).all()
    assert skm.average_precision_score(np.ones(50), probs[:, 2].numpy()) == 1.0
    if average == "none":
        assert torch.isnan(ap[[0, 1, 3]]).all() and ap[2].item() == 1.0
    else:
        assert ap.item() == 1.0


@pytest.mark.parametrize("metric_cls", RANKING)
@pytest.mark.parametrize("average", ["macro", "none"])
def test_nothing_seen_is_nan(metric_cls, average):
    for thresholds in (None, 10):
        assert torch.isnan(metric_cls(3, average=average, thresholds=thresholds).compute()).all()


# --- binary ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("form", ["probability", "two_probabilities", "two_logits", "logit"])
@pytest.mark.parametrize("metric_cls", RANKING)
def test_binary_matches_sklearn(seed, form, metric_cls):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (301,), generator=gen)
    logits = torch.randn(301, 2, generator=gen, dtype=torch.float64) + target.unsqueeze(1) * torch.tensor([0.0, 1.0])
    p1 = logits.softmax(dim=1)[:, 1]
    preds = {
        "probability": p1,
        "two_probabilities": torch.stack([1 - p1, p1], dim=1),
        "two_logits": logits,
        "logit": logits[:, 1] - logits[:, 0],  # sigmoid of the logit difference is p1
    }[form]
    expected = SK_BINARY[metric_cls](target.numpy(), p1.numpy())
    for average in ("macro", "weighted"):  # two classes: the figure of class 1 whatever the average
        assert_close(feed(metric_cls(2, average=average), preds, target, seed).compute(), expected, rtol=1e-9)
    per_class = feed(metric_cls(2, average="none"), preds, target, seed).compute()
    assert_close(per_class[1], expected, rtol=1e-9)
    assert_close(per_class[0], SK_BINARY[metric_cls](target.numpy() == 0, -p1.numpy()), rtol=1e-9)


def test_binary_ties_and_single_class():
    target = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    p = torch.tensor([0.5, 0.5, 0.9, 0.1, 0.5, 0.5, 0.9, 0.1], dtype=torch.float64)
    assert_close(feed(AUROC(2), p, target).compute(), skm.roc_auc_score(target, p))
    assert_close(feed(AveragePrecision(2), p, target).compute(), skm.average_precision_score(target, p))
    ones = torch.ones(8, dtype=torch.long)
    assert torch.isnan(feed(AUROC(2), p, ones).compute())  # sklearn raises: only one class present
    assert feed(AveragePrecision(2), p, ones).compute().item() == 1.0
    assert torch.isnan(feed(AveragePrecision(2), p, 1 - ones).compute())  # no positive: no value


# --- binned mode --------------------------------------------------------------------------------------


def on_the_grid(probs: np.ndarray, thresholds: int) -> np.ndarray:
    """Each score moved down to the highest threshold at or below it: what the bins keep of it."""
    grid = np.linspace(0, 1, thresholds)
    return grid[np.searchsorted(grid, probs, side="right") - 1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("metric_cls", RANKING)
@pytest.mark.parametrize("average", ["macro", "weighted", "none"])
@pytest.mark.parametrize("thresholds", [2, 11, 200])
def test_binned_is_exact_on_scores_moved_to_the_grid(seed, metric_cls, average, thresholds):
    logits, target = random_scores(seed, num_classes=4)
    probs = logits.softmax(dim=1)
    binned = feed(metric_cls(4, average=average, thresholds=thresholds), probs, target, seed).compute()
    gridded = on_the_grid(probs.numpy(), thresholds)
    expected = sk_average(sk_per_class(metric_cls, target.numpy(), gridded), target.numpy(), average)
    assert_close(binned, expected)


@pytest.mark.parametrize("metric_cls", RANKING)
def test_binned_approaches_exact(metric_cls):
    logits, target = random_scores(0, n=2000, num_classes=4)
    exact = feed(metric_cls(4), logits, target).compute()
    binned = feed(metric_cls(4, thresholds=1000), logits, target).compute()
    assert abs(binned.item() - exact.item()) < 2e-3


def test_binary_binned_matches_sklearn_on_the_grid():
    gen = torch.Generator().manual_seed(7)
    target = torch.randint(0, 2, (500,), generator=gen)
    p = torch.rand(500, generator=gen, dtype=torch.float64)
    gridded = on_the_grid(p.numpy(), 50)
    assert_close(feed(AUROC(2, thresholds=50), p, target).compute(), skm.roc_auc_score(target, gridded))
    assert_close(
        feed(AveragePrecision(2, thresholds=50), p, target).compute(),
        skm.average_precision_score(target, gridded),
    )


# --- chunks, out-of-range targets, arguments ----------------------------------------------------------


@st.composite
def scored_data(draw):
    c = draw(st.integers(2, 5))
    n = draw(st.integers(0, 40))
    target = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=torch.long)
    # Scores on a grid of eighths: ties are common, within a class and across batches.
    cells = draw(st.lists(st.integers(0, 8), min_size=n * c, max_size=n * c))
    probs = torch.tensor(cells, dtype=torch.float64).reshape(n, c) / 8
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return c, probs, target, cuts


@settings(max_examples=25, deadline=None)
@given(scored_data())
def test_any_chunking_equals_one_update_and_sklearn(case):
    c, probs, target, cuts = case
    for metric_cls, average, thresholds in itertools.product(RANKING, ["macro", "weighted", "none"], [None, 9]):
        whole = metric_cls(c, average=average, thresholds=thresholds)
        whole.update(probs, target)
        chunked = metric_cls(c, average=average, thresholds=thresholds)
        for a, b in itertools.pairwise([0, *cuts, len(target)]):
            chunked.update(probs[a:b], target[a:b])
        torch.testing.assert_close(chunked.compute(), whole.compute(), rtol=0, atol=0, equal_nan=True)
        if c > 2:  # (binary: the class-1 figure, checked against sklearn elsewhere)
            # The grid of eighths is part of the grid of 9 thresholds: binned equals exact here.
            per_class = sk_per_class(metric_cls, target.numpy(), probs.numpy())
            expected = sk_average(per_class, target.numpy(), average)
            np.testing.assert_allclose(whole.compute().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("metric_cls", RANKING)
@pytest.mark.parametrize("thresholds", [None, 8])
def test_out_of_range_targets_are_never_counted(metric_cls, thresholds, monkeypatch):
    logits, target = random_scores(0, n=60, num_classes=3)
    clean = feed(metric_cls(3, thresholds=thresholds), logits, target).compute()
    metric = feed(metric_cls(3, thresholds=thresholds), logits, target)
    with pytest.raises(ValueError, match=r"target has 1 label outside \[0, 3\): 3; the batch was not counted"):
        metric.update(logits[:2], torch.tensor([0, 3]))
    torch.testing.assert_close(metric.compute(), clean, rtol=0, atol=0)
    # The GPU path: the batch is masked off on the device, and compute() raises until reset().
    monkeypatch.setattr(classification, "_check_eagerly", lambda device: False)
    metric.update(logits[:2], torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match=r"target has 1 label outside \[0, 3\): -1; the batches holding them"):
        metric.compute()
    metric.reset()
    torch.testing.assert_close(feed(metric, logits, target).compute(), clean, rtol=0, atol=0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: AUROC(3, average="micro"), "average must be one of"),
        (lambda: AveragePrecision(3, average="binary"), "average must be one of"),
        (lambda: AUROC(3, thresholds=1), "thresholds must be None"),
        (lambda: AUROC(3, thresholds=True), "thresholds must be None"),
        (lambda: AveragePrecision(1), "num_classes"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "preds, target, message",
    [
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), "must be float scores"),
        (torch.rand(3), torch.tensor([0, 1, 2]), r"only accepted for num_classes=2"),
        (torch.rand(3, 2), torch.tensor([0, 1, 2]), r"expected \(N, 3\) scores"),
        (torch.rand(3, 3), torch.tensor([0, 1]), "disagree on N"),
    ],
)
def test_bad_inputs(preds, target, message):
    with pytest.raises(ValueError, match=message):
        AUROC(3).update(preds, target)


def test_repr():
    assert repr(AUROC(3)) == "AUROC(num_classes=3, average='macro', thresholds=None, device=cpu)"


# --- sync across ranks ------------------------------------------------------------------------------


class ThreadedWorld:
    """Two (or more) ranks as threads of one process, with ``all_reduce`` and ``all_gather`` done in
    memory: each rank puts its tensor in a slot, waits for the others, and reads theirs."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.local = threading.local()

    def _exchange(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.slots[self.local.rank] = tensor.clone()
        self.barrier.wait()
        everyone = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before all have read it
        return everyone

    def all_reduce(self, tensor, op):
        merge = {dist.ReduceOp.SUM: torch.add, dist.ReduceOp.MIN: torch.minimum, dist.ReduceOp.MAX: torch.maximum}
        parts = self._exchange(tensor)
        result = parts[0]
        for part in parts[1:]:
            result = merge[op](result, part)
        tensor.copy_(result)

    def all_gather(self, outputs, tensor):
        assert all(out.shape == tensor.shape for out in outputs), "all_gather needs one size on every rank"
        for out, part in zip(outputs, self._exchange(tensor), strict=True):
            out.copy_(part)

    def run(self, work) -> list:
        results: list = [None] * self.world_size
        errors: list = []

        def target(rank):
            self.local.rank = rank
            try:
                results[rank] = work(rank)
            except BaseException as e:  # surfaced in the main thread below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=HANG_GUARD_S)
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize("metric_cls", RANKING)
@pytest.mark.parametrize("thresholds", [None, 16])
@pytest.mark.parametrize("shares", [(0.3, 0.7), (0.0, 1.0), (0.2, 0.5, 0.3)])
def test_sync_gathers_every_rank_exactly(metric_cls, thresholds, shares, monkeypatch):
    logits, target = random_scores(1, n=150, num_classes=4)
    logits = (logits * 2).round() / 2  # ties across ranks too
    edges = np.cumsum([0, *shares]) * len(target)
    parts = [slice(int(a), int(b)) for a, b in itertools.pairwise(edges.round())]  # uneven, maybe empty
    world = ThreadedWorld(len(parts))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: world.world_size)
    monkeypatch.setattr(dist, "all_reduce", world.all_reduce)
    monkeypatch.setattr(dist, "all_gather", world.all_gather)

    def rank_work(rank):
        metric = metric_cls(4, average="none", thresholds=thresholds)
        feed(metric, logits[parts[rank]], target[parts[rank]], seed=rank)
        metric.sync()
        return metric.compute()

    results = world.run(rank_work)
    monkeypatch.undo()
    expected = feed(metric_cls(4, average="none", thresholds=thresholds), logits, target).compute()
    for result in results:  # every rank holds the figure of all the data, to the last bit
        torch.testing.assert_close(result, expected, rtol=0, atol=0, equal_nan=True)


def test_gather_rows_with_a_real_single_rank_group(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    logits, target = random_scores(2, n=40, num_classes=3)
    metric = feed(AUROC(3, average="weighted"), logits, target)
    expected = metric.compute()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        metric.sync()
        empty = metrics_base.gather_rows(torch.zeros(0, 3, dtype=torch.float64))
    finally:
        dist.destroy_process_group()
    assert len(metric.scores) == 1 and metric.scores[0].shape == (40, 3)
    torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=0)
    assert empty.shape == (0, 3)


def test_functional_curve_of_a_small_example():
    # Scores 0.9 (pos), 0.5 (neg), 0.5 (pos), 0.1 (neg): points (0,0), (0,1), (1,2), (1,2), (2,2).
    scores = torch.tensor([[0.9], [0.5], [0.5], [0.1]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0, 1])
    tp, fp = F.ranking_curve(scores, target, 1)
    assert tp.tolist() == [[0, 1, 2, 2, 2]] and fp.tolist() == [[0, 0, 1, 1, 2]]
    assert F.auroc_from_curve(tp, fp).item() == 0.875  # sklearn: roc_auc_score([1,0,1,0], [.9,.5,.5,.1])
    assert skm.roc_auc_score([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1]) == 0.875
