"""Regression metrics: mean squared error, mean absolute error, R².

``update(preds, target)`` takes two tensors of the same shape, ``(N,)`` or ``(N, D)``; a
shape mismatch is a ``ValueError`` rather than a silent broadcast (``(N, 1)`` against ``(N,)``
would otherwise compare every prediction with every target). Errors are summed in float64.
The mean of no samples is NaN, as there is nothing to report.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Metric, check_device

MULTIOUTPUT_MODES = ("uniform_average", "raw_values")


def _check_pair(preds: Tensor, target: Tensor, device: torch.device) -> None:
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got preds {tuple(preds.shape)} and "
            f"target {tuple(target.shape)} (squeeze a trailing dim of size 1?)"
        )
    check_device(device, preds=preds, target=target)


class MeanSquaredError(Metric):
    """Mean of ``(preds - target)**2`` over all elements.

    For ``(N, D)`` inputs this equals sklearn's ``mean_squared_error`` with its default
    ``multioutput="uniform_average"`` (every output has N samples). States: ``sum_squared_error``
    (float64) and ``total`` (int64 element count).
    """

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum_squared_error", torch.zeros((), dtype=torch.float64))
        self.add_state("total", torch.zeros((), dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch's squared errors."""
        _check_pair(preds, target, self.device)
        self.sum_squared_error += (preds.double() - target.double()).square().sum()
        self.total += target.numel()

    def compute(self) -> Tensor:
        """MSE as a float64 scalar tensor (NaN before any sample)."""
        return self.sum_squared_error / self.total


class MeanAbsoluteError(Metric):
    """Mean of ``|preds - target|`` over all elements, as sklearn's ``mean_absolute_error``.

    States: ``sum_abs_error`` (float64) and ``total`` (int64 element count).
    """

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum_abs_error", torch.zeros((), dtype=torch.float64))
        self.add_state("total", torch.zeros((), dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch's absolute errors."""
        _check_pair(preds, target, self.device)
        self.sum_abs_error += (preds.double() - target.double()).abs().sum()
        self.total += target.numel()

    def compute(self) -> Tensor:
        """MAE as a float64 scalar tensor (NaN before any sample)."""
        return self.sum_abs_error / self.total


class R2Score(Metric):
    """Coefficient of determination ``1 - SS_res / SS_tot``, as sklearn's ``r2_score``.

    ``num_outputs``: D for ``(N, D)`` inputs; 1 accepts ``(N,)`` or ``(N, 1)``.
    ``multioutput``: ``"uniform_average"`` (the mean of the per-output R², sklearn's default)
    or ``"raw_values"`` (a ``(D,)`` tensor).

    States, all sums so that ranks add up exactly: per output ``sum_target``,
    ``sum_target_squared`` and ``sum_squared_error`` (float64), and ``total`` (int64 rows).
    ``SS_tot = sum(y**2) - sum(y)**2 / n`` loses precision when the targets' mean is large
    next to their spread (e.g. 1e8 ± 1); center such targets first. Like sklearn's default
    ``force_finite=True``, a constant target gives 1 for a perfect fit and 0 otherwise;
    fewer than 2 samples give NaN.
    """

    def __init__(self, num_outputs: int = 1, multioutput: str = "uniform_average") -> None:
        super().__init__()
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be an integer >= 1, got {num_outputs!r}")
        if multioutput not in MULTIOUTPUT_MODES:
            raise ValueError(f"multioutput must be one of {MULTIOUTPUT_MODES}, got {multioutput!r}")
        self.num_outputs = num_outputs
        self.multioutput = multioutput
        for name in ("sum_target", "sum_target_squared", "sum_squared_error"):
            self.add_state(name, torch.zeros(num_outputs, dtype=torch.float64))
        self.add_state("total", torch.zeros((), dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch of ``(N,)`` or ``(N, num_outputs)`` predictions and targets."""
        _check_pair(preds, target, self.device)
        one_d = target.ndim == 1 and self.num_outputs == 1
        if not (one_d or (target.ndim == 2 and target.shape[1] == self.num_outputs)):
            raise ValueError(
                f"R2Score(num_outputs={self.num_outputs}) needs preds and target of shape "
                f"(N, {self.num_outputs})"
                + (" or (N,)" if self.num_outputs == 1 else "")
                + f", got {tuple(target.shape)}"
            )
        shape = (target.shape[0], self.num_outputs)
        preds, target = preds.double().reshape(shape), target.double().reshape(shape)
        self.sum_target += target.sum(dim=0)
        self.sum_target_squared += target.square().sum(dim=0)
        self.sum_squared_error += (preds - target).square().sum(dim=0)
        self.total += target.shape[0]

    def compute(self) -> Tensor:
        """R² as a float64 scalar, or ``(num_outputs,)`` for ``multioutput="raw_values"``."""
        n = self.total.double()
        # Rounding can push the variance of a constant target slightly below 0.
        ss_tot = (self.sum_target_squared - self.sum_target.square() / n).clamp_min(0)
        ss_res = self.sum_squared_error
        perfect_or_zero = torch.where(ss_res == 0, 1.0, 0.0).double()
        r2 = torch.where(ss_tot == 0, perfect_or_zero, 1 - ss_res / ss_tot)
        if self.multioutput == "uniform_average":
            r2 = r2.mean()
        return torch.where(self.total < 2, torch.nan, r2)

    def extra_repr(self) -> str:
        return f"num_outputs={self.num_outputs}, multioutput={self.multioutput!r}"
