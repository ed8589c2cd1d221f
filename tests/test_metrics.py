"""harness.metrics against scikit-learn (and numpy), the independent oracle.

Every metric is fed in uneven batches and must equal sklearn on the concatenated data.
"""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
import torch.distributed as dist

import harness.metrics
from harness.metrics import (
    AUROC,
    Accuracy,
    AveragePrecision,
    BrierScore,
    CalibrationError,
    ConfusionMatrix,
    F1Score,
    MeanAbsoluteError,
    MeanMetric,
    MeanSquaredError,
    Metric,
    Precision,
    R2Score,
    Recall,
    classification,
)
from harness.metrics import functional as F

SEEDS = [0, 1, 2]
AVERAGES = ["micro", "macro", "weighted", "none"]
PRF = [
    (Precision, skm.precision_score),
    (Recall, skm.recall_score),
    (F1Score, skm.f1_score),
]


def batches(n: int, seed: int) -> list[slice]:
    """Uneven consecutive slices covering range(n), including an empty and a size-1 batch."""
    rng = np.random.default_rng(seed)
    cuts = sorted(set(rng.integers(1, n, size=4).tolist()) | {1})
    edges = [0, 0, *cuts, n]  # the leading 0, 0 makes an empty batch
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def feed(metric: Metric, preds: torch.Tensor, target: torch.Tensor, seed: int) -> Metric:
    for s in batches(len(target), seed):
        metric.update(preds[s], target[s])
    return metric


def random_classification(seed: int, n: int = 300, num_classes: int = 5):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=gen)
    target = torch.randint(0, num_classes, (n,), generator=gen)
    return logits, target


def sk_average(average: str) -> str | None:
    return None if average == "none" else average


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(
        actual.numpy(), np.asarray(expected, dtype=np.float64), rtol=1e-12, atol=atol
    )


# --- classification -----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("metric_cls, sk_fn", PRF)
def test_precision_recall_f1_match_sklearn(seed, average, metric_cls, sk_fn):
    logits, target = random_classification(seed)
    metric = feed(metric_cls(5, average=average), logits, target, seed)
    expected = sk_fn(
        target, logits.argmax(1), labels=range(5), average=sk_average(average), zero_division=0
    )
    assert_close(metric.compute(), expected)


@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("metric_cls, sk_fn", PRF)
def test_absent_classes_count_as_zero_in_macro(average, metric_cls, sk_fn):
    # Classes 3..6 never occur and are never predicted; class 2 is predicted but never true.
    target = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0])
    preds = torch.tensor([0, 2, 1, 1, 0, 0, 1, 2])
    metric = feed(metric_cls(7, average=average), preds, target, seed=0)
    expected = sk_fn(target, preds, labels=range(7), average=sk_average(average), zero_division=0)
    assert_close(metric.compute(), expected)
    if average == "macro":  # sklearn without labels= averages over the 3 present classes only
        present_only = sk_fn(target, preds, average="macro", zero_division=0)
        assert_close(metric.compute() * 7 / 3, present_only)


@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("metric_cls, sk_fn", PRF)
def test_single_class_present(average, metric_cls, sk_fn):
    target = torch.full((20,), 2)
    preds = torch.tensor([2] * 15 + [0] * 5)
    metric = feed(metric_cls(4, average=average), preds, target, seed=1)
    expected = sk_fn(target, preds, labels=range(4), average=sk_average(average), zero_division=0)
    assert_close(metric.compute(), expected)


def test_nothing_seen_is_zero():
    assert F1Score(3).compute().item() == 0.0
    assert Accuracy(3).compute().item() == 0.0
    assert_close(Precision(3, average="none").compute(), [0.0, 0.0, 0.0])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("form", ["labels", "logits", "probabilities"])
@pytest.mark.parametrize("metric_cls, sk_fn", PRF)
def test_binary_matches_sklearn(seed, form, metric_cls, sk_fn):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (101,), generator=gen)
    probs = torch.rand(101, generator=gen, dtype=torch.float64)
    labels = (probs > 0.5).long()
    preds = {
        "labels": labels,
        "logits": torch.stack([torch.zeros(101), torch.logit(probs).float()], dim=1),
        "probabilities": probs,
    }[form]
    metric = feed(metric_cls(2, average="binary"), preds, target, seed)
    assert_close(metric.compute(), sk_fn(target, labels, average="binary", zero_division=0))
    accuracy = feed(Accuracy(2), preds, target, seed)
    assert_close(accuracy.compute(), skm.accuracy_score(target, labels))


def test_binary_probability_threshold_is_strict():
    # p > 0.5 is class 1, so exactly 0.5 is class 0 (as sklearn's predict: decision > 0).
    assert F.to_labels(torch.tensor([0.2, 0.5, 0.5001, 1.0]), 2).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_sklearn(seed):
    logits, target = random_classification(seed)
    metric = feed(Accuracy(5), logits, target, seed)
    assert_close(metric.compute(), skm.accuracy_score(target, logits.argmax(1)))
    labels_metric = feed(Accuracy(5), logits.argmax(1), target, seed)
    assert_close(labels_metric.compute(), metric.compute())


@pytest.mark.filterwarnings("ignore:'k' \\(5\\) greater than or equal:UserWarning")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_accuracy_matches_sklearn(seed, k):
    logits, target = random_classification(seed)
    metric = feed(Accuracy(5, top_k=k), logits, target, seed)
    assert_close(metric.compute(), skm.top_k_accuracy_score(target, logits, k=k, labels=range(5)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize", [None, "true", "pred", "all"])
def test_confusion_matrix_matches_sklearn(seed, normalize):
    logits, target = random_classification(seed, num_classes=6)
    target[target == 4] = 0  # class 4 never true: its row is all zero, normalized to 0
    metric = feed(ConfusionMatrix(6, normalize=normalize), logits, target, seed)
    expected = skm.confusion_matrix(target, logits.argmax(1), labels=range(6), normalize=normalize)
    result = metric.compute()
    if normalize is None:
        assert result.dtype == torch.int64
        assert result.tolist() == expected.tolist()
    else:
        assert_close(result, expected)


def test_confusion_matrix_rejects_out_of_range_labels():
    # An out-of-range label must not land silently in a wrong cell (here: pred 3 with C=3
    # would otherwise be counted as (true 1, pred 0)).
    metric = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"preds has 1 label outside \[0, 3\): 3;"):
        metric.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"target has 1 label outside \[0, 3\): -1;"):
        metric.update(torch.tensor([0]), torch.tensor([-1]))
    assert metric.compute().sum().item() == 0
    # The pure function has no state to keep clean: it refuses such a pair outright.
    with pytest.raises(RuntimeError, match="out of bounds"):
        F.confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


# The reproductions of the bug report: out-of-range labels were counted (Accuracy), or failed
# with "index 100 is out of bounds" naming no label, after part of the batch was counted.


def test_accuracy_does_not_count_out_of_range_labels_as_correct():
    metric = Accuracy(3)
    with pytest.raises(ValueError, match=r"preds has 2 labels outside \[0, 3\): 5; target has 2"):
        metric.update(torch.tensor([5, 5]), torch.tensor([5, 5]))
    assert (metric.correct.item(), metric.total.item()) == (0, 0)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 2]))  # still usable: 1 of 2
    assert metric.compute().item() == 0.5


@pytest.mark.parametrize("metric_cls", [F1Score, ConfusionMatrix])
@pytest.mark.parametrize("bad", [12, -1])
def test_out_of_range_target_is_named_and_nothing_is_counted(metric_cls, bad):
    metric = metric_cls(10)
    metric.update(torch.tensor([1, 2]), torch.tensor([1, 3]))
    before = metric.confmat.clone()
    with pytest.raises(ValueError, match=rf"target has 1 label outside \[0, 10\): {bad};"):
        metric.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, bad, 3]))
    assert torch.equal(metric.confmat, before)


def test_functional_confusion_matrix_and_scores():
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    target = torch.tensor([0, 1, 2, 2, 2, 1])
    confmat = F.confusion_matrix(preds, target, 3)
    assert confmat.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 2]]
    precision, recall, f1 = F.precision_recall_f1_from_confmat(confmat, "none")
    assert_close(precision, [1.0, 1 / 2, 2 / 3])
    assert_close(recall, [1.0, 1 / 2, 2 / 3])
    assert_close(f1, [1.0, 1 / 2, 2 / 3])
    assert (
        F.topk_correct(
            torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]]), torch.tensor([2, 2]), 2
        ).item()
        == 1
    )


# --- protocol: reset, to, sync, no host syncs, repr -----------------------------------


def all_metrics() -> list[tuple[Metric, torch.Tensor, torch.Tensor]]:
    """Every metric with one matching batch of (preds, target)."""
    logits, target = random_classification(0, n=32)
    values = torch.randn(32, dtype=torch.float64)
    return [
        (Accuracy(5), logits, target),
        (Accuracy(5, top_k=2), logits, target),
        (Precision(5, average="weighted"), logits, target),
        (Recall(5, average="none"), logits.argmax(1), target),
        (F1Score(2, average="binary"), torch.rand(32), target % 2),
        (ConfusionMatrix(5, normalize="true"), logits, target),
        (MeanSquaredError(), values, values.flip(0)),
        (MeanAbsoluteError(), values, values.flip(0)),
        (R2Score(), values, values.flip(0)),
        (R2Score(num_outputs=2), values.view(16, 2), values.flip(0).view(16, 2)),
        (AUROC(5, thresholds=20), logits, target),
        (AveragePrecision(5, average="none", thresholds=10), logits.softmax(dim=1), target),
        (CalibrationError(5, norm="max"), logits, target),
        (BrierScore(2), torch.rand(32), target % 2),
    ]


def exact_ranking_metrics() -> list[tuple[Metric, torch.Tensor, torch.Tensor]]:
    """The metrics that keep every score (list states, gathered rather than all-reduced by sync)."""
    logits, target = random_classification(1, n=32)
    return [
        (AUROC(5), logits, target),
        (AveragePrecision(5, average="weighted"), logits.softmax(dim=1), target),
        (AUROC(2, average="none"), torch.randn(32), target % 2),
    ]


def every_metric() -> list[tuple[Metric, torch.Tensor, torch.Tensor]]:
    return all_metrics() + exact_ranking_metrics()


@pytest.mark.parametrize("index", range(len(every_metric())))
def test_reset_restores_defaults(index):
    metric, preds, target = every_metric()[index]
    fresh = metric.compute()
    metric.update(preds, target)
    once = metric.compute()
    metric.update(preds, target)
    metric.reset()
    torch.testing.assert_close(metric.compute(), fresh, equal_nan=True)
    metric.update(preds, target)
    torch.testing.assert_close(metric.compute(), once, equal_nan=True)


def test_reset_does_not_alias_defaults():
    metric = ConfusionMatrix(3)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    metric.reset()
    metric.update(torch.tensor([2]), torch.tensor([2]))
    metric.reset()  # a default that the in-place update had modified would show up here
    assert metric.confmat.sum().item() == 0


def test_to_moves_states_and_returns_self():
    metric = Accuracy(3)
    assert metric.to("cpu") is metric
    assert metric.device == torch.device("cpu")
    assert Metric().device == torch.device("cpu")


def fake_second_rank(monkeypatch, rank1):
    """A 2-rank all_reduce in one process: each reduced state is merged with rank 1's, by the
    reduce op the state asks for; returns the iterator of rank 1's states (empty once all merged)."""
    other_states = iter([getattr(rank1, name) for name in rank1._defaults])
    merge = {dist.ReduceOp.SUM: torch.add, dist.ReduceOp.MIN: torch.minimum, dist.ReduceOp.MAX: torch.maximum}

    def all_reduce(tensor, op):
        merge[op](tensor, next(other_states), out=tensor)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    return other_states


def test_update_on_another_device_is_a_clear_error():
    metric = Accuracy(3).to("meta")
    with pytest.raises(ValueError, match=r"metric\.to\(device\)"):
        metric.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"metric\.to\(device\)"):
        MeanMetric().to("meta").update(torch.ones(2))


@pytest.mark.parametrize("index", range(len(every_metric())))
def test_update_never_reads_values_on_the_host(index, monkeypatch):
    metric, preds, target = every_metric()[index]
    # On the CPU the classification metrics read the labels to raise at once; take the
    # path that states on a GPU take, as this test stands in for CUDA.
    monkeypatch.setattr(classification, "_check_eagerly", lambda device: False)

    def host_sync(*args, **kwargs):
        raise AssertionError("update() read a tensor value on the host")

    for name in (
        "item",
        "tolist",
        "cpu",
        "numpy",
        "nonzero",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
    ):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    for name in ("unique", "nonzero", "bincount"):
        monkeypatch.setattr(torch, name, host_sync)
    metric.update(preds, target)
    if isinstance(metric, Accuracy):  # MeanMetric too, with both kinds of weight
        mean = MeanMetric()
        mean.update(preds.sum(), weight=len(target))
        mean.update(preds, weight=torch.ones(len(target), 1))
        mean.update(1.5)
    monkeypatch.undo()
    metric.compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("index", range(len(every_metric())))
def test_update_does_not_sync_on_cuda(index):
    # The real check behind the monkeypatched one above: CUDA reports every GPU wait.
    metric, preds, target = every_metric()[index]
    metric.to("cuda")
    preds, target = preds.cuda(), target.cuda()
    mean = MeanMetric().to("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(preds, target)
        mean.update(preds.float().mean(), weight=len(target))
        mean.update(1.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_metric, cpu_preds, cpu_target = every_metric()[index]
    cpu_metric.update(cpu_preds, cpu_target)
    torch.testing.assert_close(metric.compute().cpu(), cpu_metric.compute(), equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric_cls", [Accuracy, F1Score, ConfusionMatrix])
def test_out_of_range_labels_on_cuda_are_masked_without_sync_and_raise_at_compute(metric_cls):
    metric = metric_cls(3).to("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(torch.tensor([0, 1, 2], device="cuda"), torch.tensor([0, 1, 1], device="cuda"))
        metric.update(torch.tensor([0, 5], device="cuda"), torch.tensor([-1, 1], device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    clean = metric_cls(3)
    clean.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    for name in clean._defaults:  # the counts as if the bad batch never came; its labels on record
        same = torch.equal(getattr(metric, name).cpu(), getattr(clean, name))
        assert same == (name not in ("out_of_range", "out_of_range_min", "out_of_range_max")), name
    with pytest.raises(ValueError, match=r"preds has 1 label outside \[0, 3\): 5; target has 1 label .*: -1;"):
        metric.compute()


@pytest.mark.parametrize("index", range(len(all_metrics())))
def test_sync_sums_states_across_ranks(index, monkeypatch):
    # Fake a 2-rank all_reduce: rank 0 receives rank 1's state for every state it reduces.
    # The synced metric must equal one metric fed both ranks' data: that is what makes SUM exact.
    rank0, preds, target = all_metrics()[index]
    rank1, both = all_metrics()[index][0], all_metrics()[index][0]
    cut = len(target) // 3  # uneven shares
    rank0.update(preds[:cut], target[:cut])
    rank1.update(preds[cut:], target[cut:])
    both.update(preds, target)
    other_states = fake_second_rank(monkeypatch, rank1)
    rank0.sync()
    assert next(other_states, None) is None  # every state was reduced
    torch.testing.assert_close(rank0.compute(), both.compute(), rtol=1e-12, atol=1e-12)


def test_sync_merges_the_out_of_range_record(monkeypatch):
    # Two ranks each saw an out-of-range label on a GPU (the deferred path): after sync, the
    # record names the smallest and the largest of both, and every rank's compute raises.
    monkeypatch.setattr(classification, "_check_eagerly", lambda device: False)
    rank0, rank1 = F1Score(4), F1Score(4)
    rank0.update(torch.tensor([0, 1]), torch.tensor([7, 1]))
    rank0.update(torch.tensor([2, 3]), torch.tensor([2, 3]))
    rank1.update(torch.tensor([0, 1]), torch.tensor([-2, 1]))
    fake_second_rank(monkeypatch, rank1)
    rank0.sync()
    assert rank0.confmat.sum().item() == 2  # only the clean batch of rank 0
    with pytest.raises(ValueError, match=r"target has 2 labels outside \[0, 4\): lowest -2, highest 7;"):
        rank0.compute()


def test_sync_with_a_real_single_rank_group(tmp_path, monkeypatch):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    metric = MeanMetric()
    metric.update(torch.tensor([1.0, 2.0, 6.0]))
    # Its SUM, MIN and MAX states through a real backend, with a deferred out-of-range record.
    monkeypatch.setattr(classification, "_check_eagerly", lambda device: False)
    confusion = ConfusionMatrix(3)
    confusion.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    confusion.update(torch.tensor([4]), torch.tensor([0]))
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        metric.sync()
        confusion.sync()
    finally:
        dist.destroy_process_group()
    assert metric.compute().item() == 3.0
    assert confusion.confmat.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match=r"preds has 1 label outside \[0, 3\): 4;"):
        confusion.compute()


def test_sync_without_process_group_is_a_no_op():
    metric = Accuracy(2)
    metric.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    metric.sync()
    assert metric.compute().item() == 0.5


def test_repr_names_the_arguments():
    assert (
        repr(Precision(4, average="micro"))
        == "Precision(num_classes=4, average='micro', device=cpu)"
    )
    assert repr(MeanMetric()) == "MeanMetric(device=cpu)"


def test_docstring_examples_run():
    failures, attempted = doctest.testmod(harness.metrics, verbose=False)
    assert attempted > 0 and failures == 0


# --- bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: Accuracy(1), "num_classes"),
        (lambda: Accuracy(2.0), "num_classes"),
        (lambda: Accuracy(3, top_k=4), "top_k"),
        (lambda: Accuracy(3, top_k=0), "top_k"),
        (lambda: Precision(3, average="avg"), "average"),
        (lambda: Recall(3, average="binary"), "average='binary' needs num_classes=2"),
        (lambda: F1Score(3, average=None), "average"),
        (lambda: ConfusionMatrix(3, normalize="rows"), "normalize"),
        (lambda: R2Score(num_outputs=0), "num_outputs"),
        (lambda: R2Score(multioutput="variance_weighted"), "multioutput"),
        (lambda: Metric().add_state("x", torch.zeros(()), reduce="mean"), "reduce must be one of"),
        (lambda: Metric().add_state("x", torch.zeros(3), reduce="cat"), "must be an empty tensor of shape"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(build, argument):
    with pytest.raises(ValueError, match=argument.replace("(", r"\(")) as info:
        build()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "metric, preds, target, message",
    [
        (Accuracy(3), torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "disagree on N"),
        (Accuracy(3), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), r"expected \(N, 3\)"),
        (
            Accuracy(3),
            torch.zeros(4),
            torch.zeros(4, dtype=torch.long),
            "only accepted for num_classes=2",
        ),
        (Accuracy(3), torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long), "expected"),
        (
            Accuracy(3, top_k=2),
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            "top_k=2",
        ),
        (F1Score(3), torch.zeros(4, 3), torch.zeros(4), "target must be integer"),
        (MeanSquaredError(), torch.zeros(4, 1), torch.zeros(4), "same shape"),
        (R2Score(num_outputs=2), torch.zeros(4, 3), torch.zeros(4, 3), "num_outputs=2"),
        (R2Score(), torch.zeros(()), torch.zeros(()), "num_outputs=1"),
    ],
)
def test_bad_inputs_raise_value_error(metric, preds, target, message):
    with pytest.raises(ValueError, match=message):
        metric.update(preds, target)


# --- aggregation ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_metric_is_the_weighted_mean(seed):
    rng = np.random.default_rng(seed)
    metric = MeanMetric()
    values, weights = [], []
    for size in rng.integers(1, 64, size=6):  # batch-mean losses weighted by batch size
        loss = rng.normal()
        metric.update(torch.tensor(loss, dtype=torch.float32), weight=int(size))
        values.append(np.float32(loss))
        weights.append(size)
    element_values = rng.normal(size=(3, 4))
    element_weights = rng.uniform(size=(3, 1))
    metric.update(torch.from_numpy(element_values), weight=torch.from_numpy(element_weights))
    values += element_values.ravel().tolist()
    weights += np.broadcast_to(element_weights, (3, 4)).ravel().tolist()
    metric.update(2.5)  # a Python float, weight 1
    values.append(2.5)
    weights.append(1.0)
    assert metric.compute().dtype == torch.float64
    assert_close(metric.compute(), np.average(values, weights=weights))


def test_mean_metric_of_nothing_is_nan():
    assert torch.isnan(MeanMetric().compute())


# --- regression -----------------------------------------------------------------------------


def random_regression(seed: int, shape: tuple[int, ...]):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1
    preds = target + torch.randn(shape, generator=gen, dtype=torch.float64)
    return preds, target


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(257,), (257, 3)])
def test_regression_matches_sklearn(seed, shape):
    preds, target = random_regression(seed, shape)
    mse = feed(MeanSquaredError(), preds, target, seed)
    mae = feed(MeanAbsoluteError(), preds, target, seed)
    outputs = 1 if len(shape) == 1 else shape[1]
    r2 = feed(R2Score(num_outputs=outputs), preds, target, seed)
    r2_raw = feed(R2Score(num_outputs=outputs, multioutput="raw_values"), preds, target, seed)
    assert_close(mse.compute(), skm.mean_squared_error(target, preds))
    assert_close(mae.compute(), skm.mean_absolute_error(target, preds))
    assert_close(r2.compute(), skm.r2_score(target, preds), atol=1e-10)
    assert_close(
        r2_raw.compute(), skm.r2_score(target, preds, multioutput="raw_values"), atol=1e-10
    )


def test_regression_accepts_float32_and_integer_targets():
    preds = torch.tensor([1.5, 2.0, 2.5], dtype=torch.float32)
    target = torch.tensor([1, 2, 4])
    expected_mse = skm.mean_squared_error(
        target.double(), preds.double()
    )  # sklearn would stay in float32
    assert_close(feed(MeanSquaredError(), preds, target, 0).compute(), expected_mse)
    assert_close(
        feed(R2Score(), preds, target, 0).compute(), skm.r2_score(target.double(), preds.double())
    )


def test_r2_edge_cases_follow_sklearn():
    constant = torch.full((5,), 2.0)
    for preds in (
        constant,
        constant + torch.arange(5.0),
    ):  # perfect fit on a constant target → 1, else 0
        metric = R2Score()
        metric.update(preds, constant)
        assert metric.compute().item() == skm.r2_score(constant, preds)
    one_sample = R2Score()
    one_sample.update(torch.tensor([1.0]), torch.tensor([2.0]))
    assert torch.isnan(one_sample.compute())
    assert torch.isnan(MeanSquaredError().compute())
