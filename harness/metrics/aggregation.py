"""Running (weighted) mean of values, e.g. the validation loss over batches of different sizes."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Metric, check_device


class MeanMetric(Metric):
    """Weighted mean of every value passed to :meth:`update`.

    States: ``weighted_sum`` and ``weight_sum``, float64 scalars on the device. ``compute()``
    is ``weighted_sum / weight_sum``, NaN before any weight is seen (like torchmetrics: an
    empty mean has no value, and 0 would look like a perfect loss). NaN values propagate;
    filtering them would need a host sync.

    Typical use, the mean loss per sample over an epoch::

        loss_metric.update(loss.detach(), weight=batch_size)  # loss is the batch mean
    """

    def __init__(self) -> None:
        super().__init__()
        self.add_state("weighted_sum", torch.zeros((), dtype=torch.float64))
        self.add_state("weight_sum", torch.zeros((), dtype=torch.float64))

    def update(self, value: Tensor | float, weight: Tensor | float = 1.0) -> None:
        """Add ``value`` with ``weight``.

        ``value`` is a number or a tensor of any shape; each element is one observation.
        ``weight`` is a number (the weight of every element) or a tensor broadcastable
        against ``value``. Tensors stay on their device; nothing is read on the host.
        """
        if not isinstance(value, Tensor):
            # torch.full launches a fill kernel; torch.tensor(value, device="cuda") would copy
            # from host memory and wait for the GPU.
            value = torch.full((), float(value), dtype=torch.float64, device=self.device)
        check_device(self.device, value=value)
        value = value.detach().double()
        if isinstance(weight, Tensor):
            check_device(self.device, weight=weight)
            value, weight = torch.broadcast_tensors(value, weight.detach().double())
            self.weighted_sum += (value * weight).sum()
            self.weight_sum += weight.sum()
        else:
            # A Python number needs no tensor: scalar arithmetic on the device, no copy.
            weight = float(weight)
            self.weighted_sum += value.sum() * weight
            self.weight_sum += weight * value.numel()

    def compute(self) -> Tensor:
        """The weighted mean as a float64 scalar tensor (NaN if the total weight is 0)."""
        return self.weighted_sum / self.weight_sum
