"""Keep a language model's summed loss per validation window, on the device: `WindowLossRecorder`.

A Trainer whose validation passes also keep, for each window of the scoring loader (a row of a
``(B, T)`` batch of token targets), the summed negative log-likelihood of its tokens (nats, float64)
and how many tokens it predicts (padding, ``IGNORE_INDEX``, left out): what a paired bootstrap over
windows resamples (`harness.stats.paired_ratio_bootstrap`). Appended batch by batch on the device (no
per-window Python, no host sync in the loop); after the pass `window_losses()` gathers every rank's
rows under torch.distributed and returns them in the loader's order.

    evaluator = WindowLossRecorder(model, None, loss_fn, metrics, device="cuda")
    scores = evaluator.validate(val_windows, prefix="test")   # the usual figures, one pass
    nll, tokens = evaluator.window_losses()                    # the same pass, window by window

The per-token losses are `F.cross_entropy` of the float32 logits, as `harness.metrics.tokens.token_nll`
computes them for the perplexity and bits-per-token metrics, so `nll.sum() / tokens.sum()` is the pass's loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.core.distributed import current
from harness.core.trainer import Trainer
from harness.metrics.base import gather_rows
from harness.metrics.tokens import IGNORE_INDEX


class WindowLossRecorder(Trainer):
    """A Trainer that keeps each window's summed NLL and token count in its validation passes (see the module
    docstring). Batches are ``(inputs, targets)`` with ``(B, T)`` targets, scored by the default `validation_step`
    into ``(B, T, V)`` logits."""

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._rows: list[Tensor] = []  # (B, 3) float64: position in the loader, summed NLL, tokens
        self._seen = 0  # this rank's windows so far, from shapes (no sync)

    def validation_step(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        loss, logits, target = super().validation_step(batch)
        nll = F.cross_entropy(logits.detach().reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                              ignore_index=IGNORE_INDEX, reduction="none").view(target.shape[0], -1)
        tokens = (target != IGNORE_INDEX).reshape(target.shape[0], -1).sum(1)
        # A scoring loader gives rank r of W the windows r, r + W, r + 2W, ... (SequentialWindows).
        ranks = current()
        local = self._seen + torch.arange(target.shape[0], device=target.device)
        index = local * ranks.world_size + ranks.rank
        self._seen += target.shape[0]
        self._rows.append(torch.stack([index.double(), nll.double().sum(1), tokens.double()], dim=1))
        return loss, logits, target

    def window_losses(self) -> tuple[Tensor, Tensor]:
        """(summed NLL per window, float64; tokens per window, int64) of the last validation pass, in the
        loader's window order. A collective under torch.distributed: every rank must call it."""
        mine = torch.cat(self._rows) if self._rows else torch.zeros(0, 3, dtype=torch.float64, device=self.device)
        rows = gather_rows(mine)
        rows = rows[rows[:, 0].argsort()]  # rank order -> the loader's order
        return rows[:, 1], rows[:, 2].long()
