"""The sentence classifiers of `models/`: Kim's CNN against a loop written from the paper, the transformer
block against torch's own `nn.TransformerEncoderLayer`, and padding that never changes a sentence's logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import TextCNN, TextTransformer

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 50
LENGTHS = [1, 2, 4, 7, 12]  # 1 and 2: shorter than every filter of the CNN


def sentences(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g) for n in LENGTHS]  # ids >= 1: 0 is padding


def padded(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def cnn(seed: int = 0) -> TextCNN:
    torch.manual_seed(seed)
    model = TextCNN(VOCAB, num_classes=3, embed_dim=6, widths=(3, 4, 5), maps=5).eval()
    with torch.no_grad():  # positive biases: a window of padding alone would give relu(bias) > 0 and could win
        for conv in model.convs:
            conv.bias.uniform_(0.5, 2.0)
    return model


def transformer(seed: int = 0) -> TextTransformer:
    torch.manual_seed(seed)
    return TextTransformer(VOCAB, num_classes=3, dim=16, heads=2, layers=2, mlp_dim=32, dropout=0.1).eval()


@pytest.mark.parametrize("make", [cnn, transformer], ids=["text_cnn", "text_transformer"])
def test_a_padded_batch_gives_each_sentence_its_logits_alone(make) -> None:
    model, rows = make(), sentences()
    with torch.no_grad():
        alone = torch.cat([model(row[None]) for row in rows])
        tight = model(padded(rows, max(LENGTHS)))  # padded to the batch's longest, as TextLoader does
        loose = model(padded(rows, 20))  # more padding than any sentence needs
    torch.testing.assert_close(tight, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(loose, alone, rtol=0, atol=1e-5)


def kim_cnn_by_hand(model: TextCNN, sentence: torch.Tensor) -> torch.Tensor:
    """Kim (2014), section 2, one sentence at a time with plain loops: the sentence's word vectors with
    width - 1 zero vectors on either side, c_i = relu(w . x_{i:i+h-1} + b) for every window, c = max_i c_i
    per feature map, the maps of every width concatenated, then the linear layer."""
    words = model.embedding.weight[sentence].double()  # (n, E)
    features = []
    for conv, width in zip(model.convs, model.widths, strict=True):
        zeros = torch.zeros(width - 1, words.shape[1], dtype=torch.float64)
        x = torch.cat([zeros, words, zeros])
        for f in range(conv.out_channels):
            w, b = conv.weight[f].double(), conv.bias[f].double()  # (E, width)
            windows = [torch.relu((w * x[i : i + width].T).sum() + b) for i in range(len(x) - width + 1)]
            features.append(max(windows))
    z = torch.stack(features)
    return model.head.weight.double() @ z + model.head.bias.double()


def test_text_cnn_is_kims_model() -> None:
    model = cnn(seed=1)
    with torch.no_grad():
        for row in sentences(seed=2):
            torch.testing.assert_close(model(row[None])[0].double(), kim_cnn_by_hand(model, row), rtol=0, atol=1e-5)


def test_text_cnn_starts_like_kims_and_keeps_padding_at_zero() -> None:
    model = TextCNN(VOCAB)
    assert model.embedding.weight.shape == (VOCAB, 300) and [c.out_channels for c in model.convs] == [100] * 3
    weights = model.embedding.weight.detach()
    assert float(weights[1:].abs().max()) <= 0.25 and not weights[0].any()
    assert model.dropout.p == 0.5 and model.head.in_features == 300


def test_max_norm_caps_each_class_weight_vector_in_training_only() -> None:
    model = cnn()
    with torch.no_grad():
        model.head.weight.mul_(100)
    before = model.head.weight.norm(dim=1).detach()
    assert float(before.min()) > 3
    model(padded(sentences(), 12))  # eval: the weights are left alone
    torch.testing.assert_close(model.head.weight.norm(dim=1), before)
    model.train()(padded(sentences(), 12))
    torch.testing.assert_close(model.head.weight.norm(dim=1), torch.full_like(before, 3.0))
    small = TextCNN(VOCAB, embed_dim=6, maps=5)
    norms = small.head.weight.norm(dim=1).clone()
    small.train()(padded(sentences(), 12))
    torch.testing.assert_close(small.head.weight.norm(dim=1), norms)  # under the cap: untouched


def test_encoder_block_equals_torchs_pre_norm_transformer_layer() -> None:
    """Our block with torch's nn.TransformerEncoderLayer(norm_first=True, gelu) given the same weights and the
    same key padding mask: the same outputs at every real token."""
    model = transformer(seed=3)
    block = model.blocks[0]
    reference = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True).eval()
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(block.qkv.weight)
        reference.self_attn.in_proj_bias.copy_(block.qkv.bias)
        reference.self_attn.out_proj.weight.copy_(block.proj.weight)
        reference.self_attn.out_proj.bias.copy_(block.proj.bias)
        reference.linear1.load_state_dict(block.mlp[0].state_dict())
        reference.linear2.load_state_dict(block.mlp[3].state_dict())
        reference.norm1.load_state_dict(block.norm1.state_dict())
        reference.norm2.load_state_dict(block.norm2.state_dict())
        tokens = padded(sentences(seed=4), 12)
        real = tokens != 0
        x = torch.randn(len(LENGTHS), 12, 16, generator=torch.Generator().manual_seed(5))
        ours = block(x, real[:, None, None, :])
        theirs = reference(x, src_key_padding_mask=~real)
    torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-5)
