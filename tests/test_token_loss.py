"""The training loss of token targets is normalised by the tokens of the whole accumulation group: micro-batches
with different padding (`ignore_index`) give the gradient of the mean over every real token of the group, as
one big batch does, not a mean of per-batch means; train/loss is the token-weighted mean, as validation's
loss is; without padding the result is bit for bit what dividing by the group's size gives.
(Two ranks with different padding: tests/test_distributed.py, scenario `token_padding`.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import Trainer
from harness.metrics import TokenCrossEntropyLoss
from models.gpt import GPT

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

VOCAB, PAD = 11, -100
LR = 0.5


def padded_batch(lengths: list[int], width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of these lengths padded to `width`: inputs 0 and targets `PAD` after each sequence's end."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (len(lengths), width), generator=g)
    y = torch.randint(0, VOCAB, (len(lengths), width), generator=g)
    for row, length in enumerate(lengths):
        x[row, length:], y[row, length:] = 0, PAD
    return x, y


# Three micro-batches of 2 sequences, padded per batch to their longest: 16, 5 and 9 real tokens.
BATCHES = [padded_batch([8, 8], 8, 1), padded_batch([4, 1], 4, 2), padded_batch([6, 3], 6, 3)]


def gpt() -> nn.Module:
    torch.manual_seed(0)
    return GPT(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0)


def sgd_step(model: nn.Module, loss: torch.Tensor) -> nn.Module:
    """One plain SGD step of `model` on `loss`, by hand: p - lr * grad."""
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return model


def nll_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1), ignore_index=PAD, reduction="sum")


def token_mean_step() -> nn.Module:
    """The oracle: one batch's token mean, every real token of the three micro-batches counted once."""
    model = gpt()
    tokens = sum(int((y != PAD).sum()) for _, y in BATCHES)
    return sgd_step(model, sum(nll_sum(model, x, y) for x, y in BATCHES) / tokens)


def mean_of_means_step() -> nn.Module:
    """What dividing each micro-batch's mean loss by the group's size gives: a mean of per-batch means."""
    model = gpt()
    return sgd_step(model, sum(nll_sum(model, x, y) / int((y != PAD).sum()) for x, y in BATCHES) / len(BATCHES))


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def trainer(model: nn.Module, loss_fn: nn.Module, lr: float = LR, accumulate: int = 3) -> Trainer:
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), loss_fn, device="cpu", progress=False,
                   loggers=[], accumulate_grad_batches=accumulate)


def test_accumulated_padded_micro_batches_give_the_token_mean_gradient() -> None:
    oracle, naive = token_mean_step(), mean_of_means_step()
    assert max_difference(oracle, naive) > 1e-2  # the padding matters: the two rules train differently

    fitted = trainer(gpt(), TokenCrossEntropyLoss())
    fitted.fit(BATCHES, epochs=1)
    assert fitted.global_step == 1
    assert max_difference(fitted.model, oracle) < 1e-6

    stepped = trainer(gpt(), TokenCrossEntropyLoss())  # train_step (lr_find's step) divides the same way
    loss = stepped.train_step(*BATCHES)
    assert max_difference(stepped.model, oracle) < 1e-6
    tokens = sum(int((y != PAD).sum()) for _, y in BATCHES)
    with torch.no_grad():
        expected = float(sum(nll_sum(gpt(), x, y) for x, y in BATCHES)) / tokens
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_train_loss_is_the_token_weighted_mean_as_validation_weights_it() -> None:
    """lr 0: the model never changes, so the epoch's train/loss is the initial model's loss over the three
    micro-batches, and validation over the same batches must give the same figure."""
    fitted = trainer(gpt(), TokenCrossEntropyLoss(), lr=0.0)
    logs = fitted.fit(BATCHES, BATCHES, epochs=1)[-1]
    model = gpt()
    with torch.no_grad():
        sums = [float(nll_sum(model, x, y)) for x, y in BATCHES]
    counts = [int((y != PAD).sum()) for _, y in BATCHES]
    token_mean = sum(sums) / sum(counts)
    mean_of_means = sum(s / c for s, c in zip(sums, counts, strict=True)) / len(BATCHES)  # equal batch sizes
    assert abs(token_mean - mean_of_means) > 1e-3  # 1,000 times the tolerance below
    assert logs["train/loss"] == pytest.approx(token_mean, rel=1e-6)
    assert logs["val/loss"] == pytest.approx(token_mean, rel=1e-6)
    assert fitted.last_pass_samples == sum(counts) == 30


class PlainTokenLoss(nn.Module):
    """Token cross-entropy without an `ignore_index` attribute: the Trainer divides by the group's size."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))


@pytest.mark.parametrize("accumulate", [1, 3])
def test_without_padding_token_counting_changes_no_bit(accumulate: int) -> None:
    """Unpadded windows (text_chars' training batches): every divisor is exactly the group's size."""
    g = torch.Generator().manual_seed(4)
    windows = [(torch.randint(0, VOCAB, (3, 8), generator=g), torch.randint(0, VOCAB, (3, 8), generator=g))
               for _ in range(7)]  # 7 batches: with 3 to a group the last group has 1
    counted, plain = trainer(gpt(), TokenCrossEntropyLoss(), accumulate=accumulate), \
        trainer(gpt(), PlainTokenLoss(), accumulate=accumulate)
    counted.fit(windows, epochs=2)
    plain.fit(windows, epochs=2)
    assert counted.global_step == plain.global_step == 2 * (7 if accumulate == 1 else 3)
    for (name, a), (_, b) in zip(counted.model.state_dict().items(), plain.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    for got, expected in zip(counted.history, plain.history, strict=True):
        assert got["train/loss"] == pytest.approx(expected["train/loss"], rel=1e-6)


def test_class_targets_and_weighted_losses_keep_the_group_mean() -> None:
    """One-dimensional class targets are samples, and a class-weighted loss's mean does not divide by the
    token count: both keep dividing by the group's size (equal to one big batch for equal batch sizes)."""
    weighted = TokenCrossEntropyLoss(weight=torch.rand(VOCAB, generator=torch.Generator().manual_seed(5)))
    fitted = trainer(gpt(), weighted)
    assert all(fitted._token_count(batch) is None for batch in BATCHES)
    fitted.fit(BATCHES, epochs=1)
    model = gpt()
    sgd_step(model, sum(weighted(model(x), y) for x, y in BATCHES) / len(BATCHES))
    assert max_difference(fitted.model, model) < 1e-6
    classes = (torch.randn(4, 3), torch.tensor([0, 2, PAD, 1]))
    assert trainer(nn.Linear(3, 3), nn.CrossEntropyLoss())._token_count(classes) is None
    assert trainer(gpt(), TokenCrossEntropyLoss())._token_count(BATCHES[1]) == 5
