"""Token-level metrics of a language model, and the loss they mirror.

A language model's batch is logits ``(..., V)`` (``(B, T, V)`` for a GPT) against targets ``(...)`` of
token ids. A target equal to ``ignore_index`` (padding) counts nowhere: not in the loss, not in any metric.

The states are sums: the tokens' negative log-likelihoods in nats (float64) and the number of tokens
(int64), or the number predicted right. ``sync`` adds them across ranks, so perplexity
``exp(nll_sum / tokens)`` and bits per token ``nll_sum / tokens / ln 2`` are exact under any number of
ranks and any batching, never an average of per-batch ratios. For a character-level model a token is a
character: bits per token is bits per character.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Metric, check_device

IGNORE_INDEX = -100  # torch's cross_entropy default: targets with this id are padding


def token_nll(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """(sum over the counted tokens of -log p(target), number of counted tokens): float64 and int64
    scalars on the logits' device. A token whose target is `ignore_index` is not counted."""
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                          ignore_index=ignore_index, reduction="sum")
    return nll.double(), (target != ignore_index).sum()


def perplexity(nll_sum: Tensor, tokens: Tensor) -> Tensor:
    """exp of the mean negative log-likelihood per token (nats): NaN before any token."""
    return torch.exp(nll_sum / tokens)


def bits_per_token(nll_sum: Tensor, tokens: Tensor) -> Tensor:
    """The mean negative log-likelihood per token in bits (nats / ln 2): NaN before any token."""
    return nll_sum / tokens / math.log(2)


def _check_tokens(logits: Tensor, target: Tensor, device: torch.device) -> None:
    if logits.ndim < 2 or tuple(logits.shape[:-1]) != tuple(target.shape):
        raise ValueError(f"logits must be (..., vocab) over targets (...): got logits {tuple(logits.shape)} "
                         f"and target {tuple(target.shape)}")
    if target.is_floating_point():
        raise ValueError(f"targets must be token ids (an integer tensor), got {target.dtype}")
    check_device(device, logits=logits, target=target)


class _TokenLikelihood(Metric):
    """States: ``nll_sum`` (float64, nats) and ``tokens`` (int64) over every counted token."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.add_state("nll_sum", torch.zeros((), dtype=torch.float64))
        self.add_state("tokens", torch.zeros((), dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch: logits ``(..., V)`` and token ids ``(...)``."""
        _check_tokens(preds, target, self.device)
        nll, tokens = token_nll(preds, target, self.ignore_index)
        self.nll_sum += nll
        self.tokens += tokens

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class Perplexity(_TokenLikelihood):
    """``exp(summed token NLL / token count)``: torchmetrics' ``Perplexity``, exact across ranks."""

    def compute(self) -> Tensor:
        return perplexity(self.nll_sum, self.tokens)


class BitsPerToken(_TokenLikelihood):
    """Mean token NLL in bits; bits per character when the tokens are characters."""

    def compute(self) -> Tensor:
        return bits_per_token(self.nll_sum, self.tokens)


class TokenAccuracy(Metric):
    """Fraction of counted tokens whose argmax logit is the target. States: ``correct``, ``tokens`` (int64)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.add_state("correct", torch.zeros((), dtype=torch.int64))
        self.add_state("tokens", torch.zeros((), dtype=torch.int64))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch: logits ``(..., V)`` and token ids ``(...)``."""
        _check_tokens(preds, target, self.device)
        counted = target != self.ignore_index
        self.correct += ((preds.argmax(-1) == target) & counted).sum()
        self.tokens += counted.sum()

    def compute(self) -> Tensor:
        """Accuracy as a float64 scalar tensor (NaN before any token)."""
        return self.correct.double() / self.tokens

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class TokenCrossEntropyLoss(nn.CrossEntropyLoss):
    """Cross-entropy of ``(..., V)`` logits (class last, as a language model gives them) against
    ``(...)`` token ids: the mean over every token whose target is not ``ignore_index``.

    ``nn.CrossEntropyLoss`` itself wants the classes in dimension 1, ``(B, V, T)``; this flattens the
    tokens instead, exactly nanoGPT's ``F.cross_entropy(logits.view(-1, V), targets.view(-1))``.
    Its keywords (``weight``, ``ignore_index``, ``label_smoothing``) are CrossEntropyLoss's."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return super().forward(input.reshape(-1, input.shape[-1]), target.reshape(-1))
