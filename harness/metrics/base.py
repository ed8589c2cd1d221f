"""The ``Metric`` base class: named state tensors that ``update`` accumulates on the device."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

# How ``sync`` merges a state across ranks: the ``torch.distributed.ReduceOp`` of the same name.
REDUCTIONS = ("sum", "min", "max")


def check_device(device: torch.device, **tensors: Tensor) -> None:
    """Inputs must already be on the states' device: copying them over would sync every batch."""
    for name, tensor in tensors.items():
        if tensor.device != device:
            raise ValueError(
                f"metric states are on {device} but {name} is on {tensor.device}: "
                "call metric.to(device) once before updating"
            )


class Metric:
    """A metric accumulates state tensors over batches and derives its value at the end.

    Subclasses register each state with :meth:`add_state` in ``__init__`` and implement:

    - ``update(...)``: accumulate one batch into the states, in place, on their device.
      It never reads a tensor value on the host (no ``.item()``, ``.tolist()``, ``.cpu()``,
      ``bool(tensor)``, ``nonzero``, ``unique``): on CUDA each of those waits for the GPU.
      (Where the states are on the CPU, such a read costs nothing: a check may raise there.)
    - ``compute()``: the result, as a tensor on the states' device, from the states alone.

    Every state is a count or a sum (``reduce="sum"``), or a smallest or largest value seen
    (``"min"`` / ``"max"``, whose defaults are the identities of those operations), so merging
    the states of two metrics elementwise gives the states of the metric over both inputs.
    That is what makes :meth:`sync` (an all-reduce across ranks) exact; a state that were a
    mean or a ratio would break it.
    """

    def __init__(self) -> None:
        self._defaults: dict[str, Tensor] = {}
        self._reductions: dict[str, str] = {}

    def add_state(self, name: str, default: Tensor, reduce: str = "sum") -> None:
        """Register state ``name`` (an attribute of the metric) with its value after ``reset()``.

        ``reduce`` is how :meth:`sync` merges the state across ranks, one of :data:`REDUCTIONS`.
        """
        if not isinstance(default, Tensor):
            raise TypeError(
                f"state {name!r}: default must be a torch.Tensor, got {type(default).__name__}"
            )
        if name in self._defaults or hasattr(self, name):
            raise ValueError(f"state {name!r}: the name is already taken on {type(self).__name__}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"state {name!r}: reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self._defaults[name] = default.detach().clone()
        self._reductions[name] = reduce
        setattr(self, name, default.detach().clone())

    def update(self, *args, **kwargs) -> None:
        """Accumulate one batch into the states (in place, no host sync)."""
        raise NotImplementedError

    def compute(self) -> Tensor:
        """The metric's value from the accumulated states."""
        raise NotImplementedError

    def reset(self) -> None:
        """Restore every state to its default, on the device the metric lives on."""
        for name, default in self._defaults.items():
            setattr(self, name, default.clone())

    def to(self, device: torch.device | str) -> Metric:
        """Move every state (and its default, so ``reset`` stays on the device); return ``self``."""
        for name, default in self._defaults.items():
            self._defaults[name] = default.to(device)
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def device(self) -> torch.device:
        """Where the states live (CPU until :meth:`to` moves them)."""
        for name in self._defaults:
            return getattr(self, name).device
        return torch.device("cpu")

    def sync(self) -> None:
        """Merge every state across ranks, in place; a no-op without an initialized process group.

        Each state is all-reduced with its ``reduce`` operation (SUM for counts and sums).
        It is a collective: every rank must call it, in the same order for all metrics. Call
        it once per accumulation period (after the last ``update``, before ``compute``) and
        ``reset`` afterwards: a second ``sync`` would add the already summed states again.
        The states must be on a device the backend handles (CUDA for NCCL, CPU for Gloo).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        for name in self._defaults:
            op = getattr(dist.ReduceOp, self._reductions[name].upper())
            dist.all_reduce(getattr(self, name), op=op)

    def extra_repr(self) -> str:
        """The constructor arguments shown by ``repr``; subclasses override it."""
        return ""

    def __repr__(self) -> str:
        args = ", ".join(a for a in (self.extra_repr(), f"device={self.device}") if a)
        return f"{type(self).__name__}({args})"
