"""Models for `model.name: odd_models:<Class>` in tests (tests/ is on sys.path): each one breaks an
assumption a command makes, so the command's refusal can be checked."""

from __future__ import annotations

import os
import signal

import torch
from torch import nn


class BatchSizeDependent(nn.Module):
    """An MNIST linear classifier whose logits are scaled by the batch size, read as a Python number:
    tracing (ONNX, TorchScript) bakes the export batch's size in, so the file disagrees with the model
    on any other batch size."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(784, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float(x.shape[0]) / 10


class NoLinearOrConv(nn.Module):
    """Logits from one weight matrix used directly: no nn.Linear or nn.Conv layer to prune or quantize."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(784, num_classes))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight + self.bias


class InterruptAtCall(nn.Module):
    """A linear MNIST classifier that sends this process SIGINT at its `at`-th forward call, counted
    over every instance (`calls`, reset by the test): a Ctrl-C at a chosen point of a multi-model command."""

    calls = 0

    def __init__(self, at: int, num_classes: int = 10) -> None:
        super().__init__()
        self.at = at
        self.fc = nn.Linear(784, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        InterruptAtCall.calls += 1
        if InterruptAtCall.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.fc(x.flatten(1))


class NaNOnRank(nn.Module):
    """A linear classifier of feature vectors whose training forward returns NaN on one rank (under
    torchrun) at chosen calls, counted from 1: `calls` lists them, `from_call` makes every call from
    there on NaN. A NaN loss on one rank of a DDP job, at a chosen step."""

    def __init__(self, in_features: int = 6, num_classes: int = 4, rank: int = 1, calls: tuple[int, ...] = (),
                 from_call: int | None = None) -> None:
        super().__init__()
        self.rank, self.calls, self.from_call = rank, set(calls), from_call
        self.training_calls = 0
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        if not self.training:
            return out
        self.training_calls += 1
        here = torch.distributed.is_initialized() and torch.distributed.get_rank() == self.rank
        late = self.from_call is not None and self.training_calls >= self.from_call
        return out * float("nan") if here and (self.training_calls in self.calls or late) else out
