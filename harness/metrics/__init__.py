"""Metrics that accumulate on the device and sync once, at the end.

The protocol (the same as torchmetrics and Ignite):

- ``update(...)`` adds one batch to state tensors, in place, on their device. It never reads
  a value of a GPU tensor on the host (no ``.item()``), so a validation loop runs without GPU
  syncs. (The classification metrics check their labels in ``update`` only on the CPU, where
  the values are on the host already; elsewhere ``compute()`` raises: see
  :mod:`harness.metrics.classification`.)
- ``compute()`` derives the result from the states, as a tensor on the same device;
  convert it to a Python float only when logging (that is the one sync).
- ``reset()`` restores the states' defaults; ``to(device)`` moves them and returns the metric.
- ``sync()`` merges every state across ranks when ``torch.distributed`` is initialized (a no-op
  otherwise). Every state is a count or a sum (summed), or a smallest or largest value (merged
  with min or max), so the merged states are exactly the states of the metric over all ranks' data.

Undefined ratios are 0 (sklearn's ``zero_division=0``): e.g. the precision of a class that
is never predicted. The mean of nothing (``MeanMetric``, regression metrics) is NaN.

Anything with ``update``, ``compute``, ``reset`` and ``to`` fits where a metric is expected
(duck typing), e.g. a torchmetrics metric. The math lives in :mod:`harness.metrics.functional`.

Example::

    >>> import torch
    >>> from harness.metrics import Accuracy
    >>> accuracy = Accuracy(num_classes=3)
    >>> accuracy.update(torch.tensor([[2.0, 0.1, 0.3], [0.2, 0.1, 0.9]]), torch.tensor([0, 1]))
    >>> accuracy.compute()
    tensor(0.5000, dtype=torch.float64)
"""

from .aggregation import MeanMetric
from .base import Metric
from .calibration import BrierScore, CalibrationError
from .classification import Accuracy, ConfusionMatrix, F1Score, Precision, Recall
from .ranking import AUROC, AveragePrecision
from .regression import MeanAbsoluteError, MeanSquaredError, R2Score
from .tokens import BitsPerToken, Perplexity, TokenAccuracy, TokenCrossEntropyLoss

__all__ = [
    "AUROC",
    "Accuracy",
    "AveragePrecision",
    "BitsPerToken",
    "BrierScore",
    "CalibrationError",
    "ConfusionMatrix",
    "F1Score",
    "MeanAbsoluteError",
    "MeanMetric",
    "MeanSquaredError",
    "Metric",
    "Perplexity",
    "Precision",
    "R2Score",
    "Recall",
    "TokenAccuracy",
    "TokenCrossEntropyLoss",
]
