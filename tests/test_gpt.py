"""models/gpt.py: the forward pass equals a plain reference written here (explicit masked softmax attention,
layer norm from its formula) on the model's own weights; the weights are tied and initialised as nanoGPT's;
attention is causal; generation is seeded and respects top_k."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import MODELS
from models.gpt import GPT

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm uses
    y = (x - mean) / torch.sqrt(var + 1e-5) * weight
    return y if bias is None else y + bias


def linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    y = x @ w[f"{name}.weight"].T
    return y + w[f"{name}.bias"] if f"{name}.bias" in w else y


def reference_forward(w: dict[str, torch.Tensor], idx: torch.Tensor, n_layer: int, n_head: int) -> torch.Tensor:
    """GPT-2's forward written out: no nn.Module, no fused attention."""
    T = idx.shape[1]
    x = w["wte.weight"][idx] + w["wpe.weight"][:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(n_layer):
        p = f"blocks.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w.get(p + "ln_1.bias"))
        q, k, v = linear(h, w, p + "attn.c_attn").chunk(3, dim=-1)
        size = q.shape[-1] // n_head
        heads = []
        for head in range(n_head):
            cols = slice(head * size, (head + 1) * size)
            scores = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(size)  # (B, T, T)
            scores = scores.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v[..., cols])
        x = x + linear(torch.cat(heads, dim=-1), w, p + "attn.c_proj")
        h = layer_norm(x, w[p + "ln_2.weight"], w.get(p + "ln_2.bias"))
        h = linear(h, w, p + "mlp.c_fc")
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + linear(h, w, p + "mlp.c_proj")
    x = layer_norm(x, w["ln_f.weight"], w.get("ln_f.bias"))
    return x @ w["wte.weight"].T  # the tied head


@pytest.mark.parametrize("bias", [False, True])
def test_forward_equals_the_written_out_reference(bias: bool) -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=bias).eval()
    with torch.no_grad():  # move every weight off its init (LayerNorm gains 1, biases 0) so each one matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 11, (3, 16))
    with torch.no_grad():
        got = model(idx)
    assert got.shape == (3, 16, 11)
    torch.testing.assert_close(got, reference_forward(weights, idx, n_layer=2, n_head=4), rtol=1e-5, atol=1e-5)
    shorter = idx[:, :5]  # any length up to block_size
    torch.testing.assert_close(model(shorter), reference_forward(weights, shorter, 2, 4), rtol=1e-5, atol=1e-5)


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=7, block_size=12, n_layer=2, n_head=2, n_embd=16).eval()
    idx = torch.randint(0, 7, (2, 12))
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 7
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :6], b[:, :6])  # earlier positions never see a later token
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_tied_weights_blocks_and_nanogpt_init() -> None:
    torch.manual_seed(0)
    model = MODELS["gpt"](vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    assert model.lm_head.weight is model.wte.weight
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 4
    # nanoGPT prints "number of parameters: 0.80M" here: all of them but the position embedding
    assert sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel() == 795_904
    assert all(b is None for b in (model.ln_f.bias, model.blocks[0].attn.c_attn.bias))  # bias=False by default
    residual_std = 0.02 / math.sqrt(2 * 4)
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert param.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert param.std().item() == pytest.approx(0.02, rel=0.05), name
        elif "ln" in name:
            assert torch.equal(param, torch.ones_like(param)), name


def test_longer_than_block_size_is_refused() -> None:
    model = GPT(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ValueError, match="longer than the model's block_size=4"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_generate_is_seeded_and_top_k_1_is_greedy() -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=9, block_size=6, n_layer=1, n_head=2, n_embd=16).eval()
    prompt = torch.tensor([[1, 2, 3]])

    def sample(seed: int, **kwargs) -> torch.Tensor:
        return model.generate(prompt, 10, generator=torch.Generator().manual_seed(seed), **kwargs)

    a = sample(0)
    assert a.shape == (1, 13) and torch.equal(a[:, :3], prompt)
    assert torch.equal(a, sample(0))
    assert not all(torch.equal(a, sample(s)) for s in range(1, 4))
    greedy = prompt
    for _ in range(10):  # argmax of the last position, feeding back at most block_size tokens
        greedy = torch.cat([greedy, model(greedy[:, -6:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(sample(5, top_k=1), greedy)
    assert torch.equal(sample(5, temperature=1e-4), greedy)
    assert F.softmax(model(prompt)[:, -1], -1).sum().item() == pytest.approx(1.0)
