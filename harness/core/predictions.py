"""Keep every sample's predictions from a scoring pass, on the device: `PredictionRecorder`.

A Trainer whose validation passes also keep, for each sample, its class probabilities and target
(float64 ``(N, C)`` and int64 ``(N,)``: 8·C + 16 bytes a sample), and the inputs of the most confident
mistakes when the inputs are images. Everything stays on the device and is appended batch by batch
(no per-sample Python, no host sync in the loop); after the pass `predictions()` gathers the rows of
every rank under torch.distributed and returns them in the order of the split.

    evaluator = PredictionRecorder(model, None, loss_fn, metrics, device="cuda")
    scores = evaluator.validate(test_loader, prefix="test")   # the usual figures, one pass
    kept = evaluator.predictions()                            # the same pass, sample by sample

Probabilities come from `harness.metrics.functional.to_probabilities`, the rule the score metrics
(AUROC, CalibrationError, ...) apply to the same outputs, so a metric fed `kept.probs` counts exactly
what it would have counted during the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from harness.core.distributed import all_gather_states, current
from harness.core.trainer import Trainer
from harness.metrics.base import gather_rows
from harness.metrics.functional import to_probabilities


@dataclass
class ConfidentMistakes:
    """The most confident wrong predictions of a pass, most confident first, with their inputs."""

    index: Tensor  # (k,) int64: position in the split
    inputs: Tensor  # (k, C, H, W) float32: the images as the model saw them (normalised)
    target: Tensor  # (k,) int64
    predicted: Tensor  # (k,) int64
    confidence: Tensor  # (k,) float64: the probability of the predicted class

    def select(self, rows: Tensor) -> ConfidentMistakes:
        """These rows (indices or a bool mask) of every field."""
        return ConfidentMistakes(*(getattr(self, f.name)[rows] for f in fields(self)))


@dataclass
class Predictions:
    """Every sample of a pass, in the order of the split (all ranks together)."""

    index: Tensor  # (N,) int64: position in the split (0..N-1 for a whole split)
    target: Tensor  # (N,) int64
    probs: Tensor  # (N, C) float64: class probabilities
    input_shape: tuple[int, ...]  # one sample's input shape, e.g. (1, 28, 28) or (30,); token ids: the last batch's
    mistakes: ConfidentMistakes | None  # None unless the inputs are images (C, H, W)
    token_ids: bool = False  # the inputs were integer ids (B, L), L the padded length of each batch (sentences)


class PredictionRecorder(Trainer):
    """A Trainer that keeps per-sample predictions of its validation passes (see the module docstring).

    `keep_mistakes`: how many of the most confident mistakes keep their inputs, when a batch's inputs
    are images ``(N, C, H, W)``. Batches are ``(inputs, target, ...)`` and scored by the default
    `validation_step`.
    """

    keep_mistakes = 16

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._probs: list[Tensor] = []
        self._pairs: list[Tensor] = []  # (n, 2): position in the split, target
        self._input_shape: tuple[int, ...] = ()
        self._token_ids = False
        self._mistakes: ConfidentMistakes | None = None
        self._seen = 0  # this rank's samples so far, from shapes (no sync)

    def validation_step(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        loss, preds, target = super().validation_step(batch)
        self._record(batch[0], preds.detach(), target)
        return loss, preds, target

    def _record(self, inputs: Tensor, preds: Tensor, target: Tensor) -> None:
        probs = to_probabilities(preds, preds.shape[1] if preds.ndim == 2 else 2)  # (N,): class 1's of two
        target = target.long()
        # A scoring loader gives rank r of W the samples r, r + W, r + 2W, ... (no padding; see shard_indices).
        ranks = current()
        local = self._seen + torch.arange(target.shape[0], device=target.device)
        index = local * ranks.world_size + ranks.rank
        self._seen += target.shape[0]
        self._probs.append(probs)
        self._pairs.append(torch.stack([index, target], dim=1))
        self._input_shape = tuple(inputs.shape[1:])
        self._token_ids = not inputs.is_floating_point()  # images and features arrive as floats, normalised
        if inputs.ndim == 4 and self.keep_mistakes > 0:
            batch = _most_confident_mistakes(inputs, probs, target, index, self.keep_mistakes)
            kept = batch if self._mistakes is None else _concat(self._mistakes, batch)
            self._mistakes = _top_k(kept, self.keep_mistakes)

    def predictions(self) -> Predictions:
        """The last validation pass, sample by sample, in split order. A collective under
        torch.distributed: every rank must call it (each gets every rank's rows)."""
        num_classes, input_shape, token_ids = self._shapes()
        probs = gather_rows(torch.cat(self._probs) if self._probs
                            else torch.zeros(0, num_classes, dtype=torch.float64, device=self.device))
        pairs = gather_rows(torch.cat(self._pairs) if self._pairs
                            else torch.zeros(0, 2, dtype=torch.int64, device=self.device))
        order = pairs[:, 0].argsort()  # rank order -> split order
        mistakes = None
        if len(input_shape) == 3 and self.keep_mistakes > 0:  # images
            mistakes = self._mistakes
            if mistakes is None:  # this rank scored no batch
                mistakes = _no_mistakes(input_shape, self.device)
            if current().world_size > 1:
                gathered = ConfidentMistakes(*(gather_rows(getattr(mistakes, f.name)) for f in fields(mistakes)))
                mistakes = _top_k(gathered, self.keep_mistakes)
            # note: a host sync, once per pass. Slots that correct predictions filled while fewer than k
            # mistakes had been seen score -1: dropped here.
            mistakes = mistakes.select(mistakes.confidence >= 0)
        return Predictions(pairs[order, 0], pairs[order, 1], probs[order], input_shape, mistakes, token_ids)

    def _shapes(self) -> tuple[int, tuple[int, ...], bool]:
        """(classes, one sample's input shape, whether the inputs are token ids) of the pass. Under
        torch.distributed a rank that scored no batch (fewer samples than ranks) knows none of them: it takes
        those of a rank that did, so that every rank joins the same gathers with rows of one width (a
        collective, once per pass)."""
        mine = (self._probs[0].shape[1], self._input_shape, self._token_ids) if self._probs else None
        if current().world_size == 1:
            return mine or (0, (), False)
        return next((shapes for shapes in all_gather_states(mine) if shapes is not None), (0, (), False))


def _most_confident_mistakes(inputs: Tensor, probs: Tensor, target: Tensor, index: Tensor,
                             k: int) -> ConfidentMistakes:
    """This batch's k most confident mistakes (fewer samples: all), on the device. A correct prediction
    scores -1, below any mistake: it takes a slot only when the batch has fewer than k mistakes."""
    confidence, predicted = probs.max(dim=1)
    score = torch.where(predicted != target, confidence, -1.0)
    top = score.topk(min(k, score.shape[0])).indices
    return ConfidentMistakes(index[top], inputs[top].float(), target[top], predicted[top], score[top])


def _concat(a: ConfidentMistakes, b: ConfidentMistakes) -> ConfidentMistakes:
    return ConfidentMistakes(*(torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(a)))


def _top_k(m: ConfidentMistakes, k: int) -> ConfidentMistakes:
    """The k rows of highest confidence, highest first."""
    return m.select(m.confidence.topk(min(k, m.confidence.shape[0])).indices)


def _no_mistakes(input_shape: tuple[int, ...], device: torch.device) -> ConfidentMistakes:
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return ConfidentMistakes(empty, torch.zeros(0, *input_shape, device=device), empty, empty,
                             torch.zeros(0, dtype=torch.float64, device=device))
