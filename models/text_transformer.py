"""A small transformer encoder for sentence classification, trained from scratch.

Token embeddings plus fixed sinusoidal positions (Vaswani et al. 2017, so no longest-sentence limit),
`layers` pre-LayerNorm encoder blocks (self-attention through
`torch.nn.functional.scaled_dot_product_attention` with a key padding mask, then a GELU MLP, each
with a residual connection), a final LayerNorm, the mean of the real tokens' vectors (padding left
out), dropout and a linear layer to the classes.

Input: token ids (batch, length) padded with `pad_index`; real words are `tokens != pad_index`. No
query attends to a padded key, and pooling averages real positions only, so in eval mode a sentence
gives the same logits alone as in any padded batch (up to float rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EncoderBlock(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)); padded keys are masked out of the attention."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`x` (B, L, dim); `keep` (B, 1, 1, L) bool, True at real tokens: the keys every query may see."""
        batch, length, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, L, head_dim)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                                  dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class TextTransformer(nn.Module):
    """Transformer encoder classifier: embeddings + sinusoidal positions, pre-LN blocks, masked mean pooling.

    Args:
        vocab_size: rows of the embedding table (the recipe layer sets it from the data's vocabulary).
        num_classes: outputs.
        dim: model width; heads: attention heads (dim must be a multiple); layers: encoder blocks.
        mlp_dim: hidden width of each block's MLP.
        dropout: on the embeddings, attention weights, residual branches and the pooled vector (training only).
        pad_index: the id of padding (the harness's vocabularies put <pad> at 0).
    """

    def __init__(self, vocab_size: int, num_classes: int = 2, dim: int = 128, heads: int = 4, layers: int = 2,
                 mlp_dim: int = 256, dropout: float = 0.1, pad_index: int = 0) -> None:
        super().__init__()
        self.pad_index = pad_index
        self.dim = dim
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_index)
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)  # scaled by sqrt(dim) in forward: unit variance
        with torch.no_grad():
            self.embedding.weight[pad_index].zero_()
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def positions(self, length: int, device: torch.device) -> torch.Tensor:
        """Sinusoidal position vectors (length, dim): sin on even, cos on odd features."""
        position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, self.dim, 2, device=device, dtype=torch.float32)
                              * (-math.log(10000.0) / self.dim))
        table = torch.zeros(length, self.dim, device=device)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: self.dim // 2])
        return table

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_classes) of token ids (batch, length)."""
        real = tokens != self.pad_index  # (B, L)
        x = self.embedding(tokens) * math.sqrt(self.dim) + self.positions(tokens.shape[1], tokens.device)
        x = self.dropout(x)
        keep = real[:, None, None, :]
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        weights = real.unsqueeze(-1).to(x.dtype)  # mean over the real tokens only
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(self.dropout(pooled))
