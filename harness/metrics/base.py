"""The ``Metric`` base class: named state tensors that ``update`` accumulates on the device."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

# How ``sync`` merges a state across ranks: the ``torch.distributed.ReduceOp`` of the same name,
# or "cat": the state is a list of tensors (rows), and every rank gets the rows of all ranks.
REDUCTIONS = ("sum", "min", "max", "cat")


def check_device(device: torch.device, **tensors: Tensor) -> None:
    """Inputs must already be on the states' device: copying them over would sync every batch."""
    for name, tensor in tensors.items():
        if tensor.device != device:
            raise ValueError(
                f"metric states are on {device} but {name} is on {tensor.device}: "
                "call metric.to(device) once before updating"
            )


def gather_rows(rows: Tensor) -> Tensor:
    """Every rank's ``rows`` (same dtype and trailing shape, any number of rows), concatenated in
    rank order; ``rows`` itself without an initialized process group (one process).

    ``all_gather`` needs tensors of one size, so each rank first shares its row count, then pads
    its rows to the largest count; the padding is cut off again. The counts are read on the host:
    a sync, once per ``sync()``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    world_size = dist.get_world_size()
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in torch.cat(counts).tolist()]  # note: a CPU-GPU sync point
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)])


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

    A metric that needs every sample (an exact AUROC ranks all the scores) keeps a list of
    tensors instead (``reduce="cat"``): ``update`` appends one batch's rows, and ``sync``
    gathers the rows of every rank. Its memory grows with the data.
    """

    def __init__(self) -> None:
        self._defaults: dict[str, Tensor] = {}
        self._reductions: dict[str, str] = {}

    def add_state(self, name: str, default: Tensor, reduce: str = "sum") -> None:
        """Register state ``name`` (an attribute of the metric) with its value after ``reset()``.

        ``reduce`` is how :meth:`sync` merges the state across ranks, one of :data:`REDUCTIONS`.
        With ``reduce="cat"`` the state is a list, empty after ``reset()``, of tensors of rows;
        ``default`` is an empty tensor of shape ``(0, ...)`` giving their dtype, trailing shape
        and device, so that a rank that saw nothing still takes part in ``sync``.
        """
        if not isinstance(default, Tensor):
            raise TypeError(
                f"state {name!r}: default must be a torch.Tensor, got {type(default).__name__}"
            )
        if name in self._defaults or hasattr(self, name):
            raise ValueError(f"state {name!r}: the name is already taken on {type(self).__name__}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"state {name!r}: reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if reduce == "cat" and (default.ndim == 0 or default.shape[0] != 0):
            raise ValueError(
                f"state {name!r}: a 'cat' state's default must be an empty tensor of shape (0, ...), "
                f"got shape {tuple(default.shape)}"
            )
        self._defaults[name] = default.detach().clone()
        self._reductions[name] = reduce
        setattr(self, name, self._fresh(name))

    def _fresh(self, name: str) -> Tensor | list[Tensor]:
        """A state's value after ``reset()``: a copy of its default, or an empty list of rows."""
        if self._reductions[name] == "cat":
            return []
        return self._defaults[name].clone()

    def update(self, *args, **kwargs) -> None:
        """Accumulate one batch into the states (in place, no host sync)."""
        raise NotImplementedError

    def compute(self) -> Tensor:
        """The metric's value from the accumulated states."""
        raise NotImplementedError

    def reset(self) -> None:
        """Restore every state to its default, on the device the metric lives on."""
        for name in self._defaults:
            setattr(self, name, self._fresh(name))

    def to(self, device: torch.device | str) -> Metric:
        """Move every state (and its default, so ``reset`` stays on the device); return ``self``."""
        for name, default in self._defaults.items():
            self._defaults[name] = default.to(device)
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, [rows.to(device) for rows in value])
            else:
                setattr(self, name, value.to(device))
        return self

    @property
    def device(self) -> torch.device:
        """Where the states live (CPU until :meth:`to` moves them)."""
        for default in self._defaults.values():
            return default.device
        return torch.device("cpu")

    def sync(self) -> None:
        """Merge every state across ranks, in place; a no-op without an initialized process group.

        Each state is all-reduced with its ``reduce`` operation (SUM for counts and sums); a
        ``"cat"`` state is gathered (:func:`gather_rows`), leaving one tensor of every rank's
        rows, in rank order. It is a collective: every rank must call it, in the same order for
        all metrics. Call it once per accumulation period (after the last ``update``, before
        ``compute``) and ``reset`` afterwards: a second ``sync`` would add the already summed
        states again (or gather the gathered rows again).
        The states must be on a device the backend handles (CUDA for NCCL, CPU for Gloo).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        for name, reduce in self._reductions.items():
            if reduce == "cat":
                rows = torch.cat([self._defaults[name], *getattr(self, name)])
                setattr(self, name, [gather_rows(rows)])
            else:
                dist.all_reduce(getattr(self, name), op=getattr(dist.ReduceOp, reduce.upper()))

    def extra_repr(self) -> str:
        """The constructor arguments shown by ``repr``; subclasses override it."""
        return ""

    def __repr__(self) -> str:
        args = ", ".join(a for a in (self.extra_repr(), f"device={self.device}") if a)
        return f"{type(self).__name__}({args})"
