"""Token-level metrics: perplexity and bits per token are exp / log2 of the summed NLL over the counted
tokens, computed here by hand from softmax probabilities with the padding left out; the same through
torchmetrics' Perplexity; exact over uneven batches and two ranks; the token loss is nanoGPT's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_metrics import fake_second_rank

from harness.metrics import BitsPerToken, Perplexity, TokenAccuracy, TokenCrossEntropyLoss

PAD = -100


def batch(seed: int, b: int = 3, t: int = 7, v: int = 5, padded: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (b, t, v) and targets (b, t) whose last `padded` positions of the last row are padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 2
    target = torch.randint(0, v, (b, t), generator=g)
    target[-1, t - padded:] = PAD
    return logits, target


def by_hand(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int, int]:
    """(summed NLL in nats, counted tokens, correct argmax) with Python loops over every token."""
    nll, tokens, correct = 0.0, 0, 0
    for logits, target in batches:
        probs = logits.double().softmax(-1)
        for row in range(target.shape[0]):
            for pos in range(target.shape[1]):
                label = int(target[row, pos])
                if label == PAD:
                    continue
                nll -= math.log(float(probs[row, pos, label]))
                tokens += 1
                correct += int(logits[row, pos].argmax()) == label
    return nll, tokens, correct


def test_perplexity_and_bits_are_exp_and_log2_of_the_summed_nll_without_padding() -> None:
    batches = [batch(0), batch(1, b=2, t=4, padded=3), batch(2, padded=0)]
    nll, tokens, correct = by_hand(batches)
    assert tokens == 3 * 7 - 4 + 2 * 4 - 3 + 3 * 7
    ppl, bits, acc = Perplexity(), BitsPerToken(), TokenAccuracy()
    for logits, target in batches:
        for metric in (ppl, bits, acc):
            metric.update(logits, target)
    assert ppl.tokens.item() == bits.tokens.item() == acc.tokens.item() == tokens
    assert ppl.compute().item() == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert bits.compute().item() == pytest.approx(math.log2(math.exp(nll / tokens)), rel=1e-6)
    assert acc.compute().item() == correct / tokens
    # Not the mean of per-batch perplexities: the batches hold different numbers of tokens.
    per_batch = [math.exp(by_hand([b])[0] / by_hand([b])[1]) for b in batches]
    assert abs(ppl.compute().item() - sum(per_batch) / 3) > 1e-3


def test_padding_changes_nothing_whatever_its_logits() -> None:
    logits, target = batch(3)
    noisy = logits.clone()
    noisy[target == PAD] = 1e4 * torch.randn_like(noisy[target == PAD])  # wild logits at padded positions
    for cls in (Perplexity, BitsPerToken, TokenAccuracy):
        a, b = cls(), cls()
        a.update(logits, target)
        b.update(noisy, target)
        assert a.compute().item() == b.compute().item(), cls.__name__


def test_perplexity_matches_torchmetrics() -> None:
    from torchmetrics.text import Perplexity as TorchmetricsPerplexity

    ours, theirs = Perplexity(), TorchmetricsPerplexity(ignore_index=PAD).double()
    for seed in range(3):
        logits, target = batch(seed)
        ours.update(logits, target)
        theirs.update(logits.double(), target)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), rel=1e-6)


@pytest.mark.parametrize("cls", [Perplexity, BitsPerToken, TokenAccuracy])
def test_sync_sums_the_token_states_across_ranks(cls, monkeypatch) -> None:
    first, second = batch(4, b=4), batch(5, b=1, padded=6)  # uneven shares
    rank0, rank1, both = cls(), cls(), cls()
    rank0.update(*first)
    rank1.update(*second)
    both.update(*first)
    both.update(*second)
    other = fake_second_rank(monkeypatch, rank1)
    rank0.sync()
    assert next(other, None) is None
    torch.testing.assert_close(rank0.compute(), both.compute(), rtol=1e-12, atol=1e-12)


def test_shapes_and_devices_are_checked() -> None:
    logits, target = batch(0)
    with pytest.raises(ValueError, match=r"logits must be \(\.\.\., vocab\)"):
        Perplexity().update(logits, target[:, :-1])
    with pytest.raises(ValueError, match="token ids"):
        TokenAccuracy().update(logits, target.float())
    with pytest.raises(ValueError, match=r"metric\.to\(device\)"):
        Perplexity().to("meta").update(logits, target)


def test_token_loss_is_the_mean_over_counted_tokens_as_nanogpt_computes_it() -> None:
    logits, target = batch(6)
    nll, tokens, _ = by_hand([(logits, target)])
    loss = TokenCrossEntropyLoss()(logits, target)
    assert loss.item() == pytest.approx(nll / tokens, rel=1e-6)
    nanogpt = F.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1), ignore_index=PAD)
    assert loss.item() == nanogpt.item()
    smoothed = TokenCrossEntropyLoss(label_smoothing=0.1)(logits, target)
    assert smoothed.item() == F.cross_entropy(logits.view(-1, 5), target.view(-1), label_smoothing=0.1).item()


def test_a_padding_id_that_is_a_real_token_id_is_never_counted() -> None:
    # Padding with id 0 (a valid class): positions whose target is 0 count nowhere, even where the
    # model predicts 0 there.
    logits = torch.tensor([[[5.0, 0.0], [5.0, 0.0], [0.0, 5.0]]])  # argmax 0, 0, 1
    target = torch.tensor([[0, 1, 1]])
    acc, ppl = TokenAccuracy(ignore_index=0), Perplexity(ignore_index=0)
    acc.update(logits, target)
    ppl.update(logits, target)
    assert (acc.correct.item(), acc.tokens.item()) == (1, 2)
    assert ppl.compute().item() == pytest.approx(math.exp(-(F.log_softmax(logits[0, 1:], -1)[:, 1].sum().item()) / 2))
