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
