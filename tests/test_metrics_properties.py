"""Properties of the classification metrics over random inputs, against scikit-learn.

(a) Valid labels: any split of the data into chunks gives the states of one update, and the
    results equal scikit-learn's.
(b) Out-of-range labels: the update raises a ValueError naming them and leaves every state as
    it was (the CPU path); on a GPU the batch is masked off instead and ``compute()`` raises
    (the deferred path, taken here on the CPU by switching off the eager check).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics import Accuracy, ConfusionMatrix, F1Score, Metric, Precision, Recall, classification

PROPERTY = settings(max_examples=50, deadline=None)
PRF = [(Precision, skm.precision_score), (Recall, skm.recall_score), (F1Score, skm.f1_score)]
RECORD = ("out_of_range", "out_of_range_min", "out_of_range_max")


@contextlib.contextmanager
def deferred_checks():
    """The path states on a GPU take: labels are recorded in ``update``, checked in ``compute``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classification, "_check_eagerly", lambda device: False)
        yield


@dataclass
class Data:
    num_classes: int
    preds: torch.Tensor  # (N,) int64 labels, or (N, C) float scores with distinct values per row
    target: torch.Tensor  # (N,) int64
    cuts: list[int]  # chunk boundaries inside [0, N], repeats allowed (empty chunks)

    @property
    def scores(self) -> bool:
        return self.preds.ndim == 2

    @property
    def pred_labels(self) -> np.ndarray:
        """The oracle's predicted labels: numpy's argmax, independent of harness.to_labels."""
        preds = self.preds.numpy()
        return preds.argmax(axis=1) if self.scores else preds

    def chunks(self) -> list[slice]:
        edges = [0, *self.cuts, len(self.target)]
        return [slice(a, b) for a, b in itertools.pairwise(edges)]


@st.composite
def data(draw, num_classes=None, scores=None, min_size: int = 1, max_size: int = 40) -> Data:
    """Valid labels; ``num_classes`` and the form of preds (``scores`` or labels) drawn unless given."""
    c = num_classes if num_classes is not None else draw(st.integers(2, 6))
    n = draw(st.integers(min_size, max_size))
    target = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=torch.long)
    if scores if scores is not None else draw(st.booleans()):
        rows = draw(st.lists(st.permutations(range(c)), min_size=n, max_size=n))
        preds = torch.tensor(rows, dtype=torch.float32).reshape(n, c)
    else:
        preds = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=torch.long)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return Data(c, preds, target, cuts)


def metrics_for(d: Data) -> list[Metric]:
    c = d.num_classes
    metrics: list[Metric] = [Accuracy(c), ConfusionMatrix(c)]
    metrics += [cls(c, average=average) for cls, _ in PRF for average in ("micro", "macro", "weighted", "none")]
    if c == 2:
        metrics += [cls(2, average="binary") for cls, _ in PRF]
    if d.scores and c >= 3:
        metrics.append(Accuracy(c, top_k=c - 1))
    return metrics


def states(metric: Metric, names=None) -> dict[str, torch.Tensor]:
    return {name: getattr(metric, name).clone() for name in names or metric._defaults}


def counting_states(metric: Metric) -> dict[str, torch.Tensor]:
    return states(metric, [name for name in metric._defaults if name not in RECORD])


def assert_states_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def sklearn_value(metric: Metric, d: Data) -> np.ndarray:
    """What scikit-learn says the metric is, on all of ``d``."""
    y_true, y_pred, labels = d.target.numpy(), d.pred_labels, list(range(d.num_classes))
    if isinstance(metric, Accuracy) and metric.top_k > 1:
        return skm.top_k_accuracy_score(y_true, d.preds.numpy(), k=metric.top_k, labels=labels)
    if isinstance(metric, Accuracy):
        return skm.accuracy_score(y_true, y_pred)
    if isinstance(metric, ConfusionMatrix):
        return skm.confusion_matrix(y_true, y_pred, labels=labels)
    sk_fn = dict((cls, fn) for cls, fn in PRF)[type(metric)]
    if metric.average == "binary":
        return sk_fn(y_true, y_pred, average="binary", zero_division=0)
    average = None if metric.average == "none" else metric.average
    return sk_fn(y_true, y_pred, labels=labels, average=average, zero_division=0)


# --- (a) valid labels --------------------------------------------------------------------------


@PROPERTY
@given(data())
def test_chunked_updates_equal_one_update_and_sklearn(d):
    for whole, chunked in zip(metrics_for(d), metrics_for(d), strict=True):
        whole.update(d.preds, d.target)
        with deferred_checks():  # the chunks take the GPU path: it must count the same
            for s in d.chunks():
                chunked.update(d.preds[s], d.target[s])
        assert_states_equal(states(chunked), states(whole))
        assert_states_equal(states(whole, RECORD), {name: whole._defaults[name] for name in RECORD})
        expected = sklearn_value(whole, d)
        np.testing.assert_allclose(whole.compute().numpy(), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(chunked.compute().numpy(), expected, rtol=1e-12, atol=1e-12)


# --- (b) out-of-range labels --------------------------------------------------------------------


@dataclass
class BadBatch:
    preds: torch.Tensor
    target: torch.Tensor
    offending: dict[str, list[int]]  # "preds" / "target" -> the out-of-range values put in


@st.composite
def with_bad_batch(draw) -> tuple[Data, BadBatch]:
    """Valid data to feed first, then one batch of the same form with out-of-range labels."""
    d = draw(data(min_size=0))
    bad = draw(data(num_classes=d.num_classes, scores=d.scores, max_size=12))
    c, n = d.num_classes, len(bad.target)
    tensors = {"preds": bad.preds.clone(), "target": bad.target.clone()}
    names = ["target"] if d.scores else ["preds", "target"]  # scores hold no label to corrupt
    out_of_range = st.integers(-40, -1) | st.integers(c, c + 40)
    corruptions = draw(st.lists(st.tuples(st.sampled_from(names), st.integers(0, n - 1), out_of_range), min_size=1))
    for name, position, value in corruptions:
        tensors[name][position] = value
    offending = {
        name: [v for v in tensors[name].tolist() if not 0 <= v < c] if name in names else [] for name in tensors
    }
    return d, BadBatch(tensors["preds"], tensors["target"], offending)


def expected_parts(bad: BadBatch, num_classes: int) -> tuple[list[str], list[str]]:
    """The pieces the error message must hold, and those it must not."""
    present, absent = [], []
    for name, values in bad.offending.items():
        if not values:
            absent.append(f"{name} has")
            continue
        shown = str(values[0]) if min(values) == max(values) else f"lowest {min(values)}, highest {max(values)}"
        plural = "" if len(values) == 1 else "s"
        present.append(f"{name} has {len(values)} label{plural} outside [0, {num_classes}): {shown};")
    return present, absent


def assert_names_the_labels(message: str, bad: BadBatch, num_classes: int) -> None:
    present, absent = expected_parts(bad, num_classes)
    assert present, "the strategy must corrupt at least one label"
    for part in present:
        assert part in message
    for part in absent:
        assert part not in message


def feed(metric: Metric, d: Data) -> None:
    for s in d.chunks():
        metric.update(d.preds[s], d.target[s])


@PROPERTY
@given(with_bad_batch())
def test_out_of_range_labels_raise_in_update_and_change_nothing(case):
    d, bad = case
    for metric, clean in zip(metrics_for(d), metrics_for(d), strict=True):
        feed(metric, d)
        before = states(metric)
        with pytest.raises(ValueError, match="the batch was not counted") as info:
            metric.update(bad.preds, bad.target)
        assert_names_the_labels(str(info.value), bad, d.num_classes)
        assert_states_equal(states(metric), before)
        # Still usable, and the rejected batch left no trace: the same as never having seen it.
        feed(metric, d)
        feed(clean, d)
        feed(clean, d)
        assert_states_equal(states(metric), states(clean))
        torch.testing.assert_close(metric.compute(), clean.compute(), rtol=0, atol=0)


@PROPERTY
@given(with_bad_batch())
def test_out_of_range_labels_on_the_deferred_path_raise_at_compute(case):
    d, bad = case
    for metric, clean in zip(metrics_for(d), metrics_for(d), strict=True):
        with deferred_checks():
            feed(metric, d)
            before = counting_states(metric)
            metric.update(bad.preds, bad.target)  # no host read, so no error yet
            assert_states_equal(counting_states(metric), before)
            feed(metric, d)  # later batches still count; the record stays
        feed(clean, d)
        feed(clean, d)
        assert_states_equal(counting_states(metric), counting_states(clean))
        with pytest.raises(ValueError, match=r"the batches holding them were not counted; reset\(\)") as info:
            metric.compute()
        assert_names_the_labels(str(info.value), bad, d.num_classes)
        metric.reset()
        assert_states_equal(states(metric), {name: metric._defaults[name] for name in metric._defaults})
        with deferred_checks():
            feed(metric, d)
        clean.reset()
        feed(clean, d)
        torch.testing.assert_close(metric.compute(), clean.compute(), rtol=0, atol=0)
