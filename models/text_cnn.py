"""Kim (2014), "Convolutional Neural Networks for Sentence Classification": the CNN-rand model.

Word vectors learned from scratch (300-d, initialised U[-0.25, 0.25] as Kim's code does for words
without a pretrained vector), one convolution per filter width (3, 4, 5) with 100 feature maps each,
ReLU, max-over-time pooling, dropout 0.5 on the pooled features, a linear layer to the classes.
Kim's max-norm constraint: after a gradient step, each class's weight vector of the last layer is
rescaled to an L2 norm of at most 3 (`max_norm`). Here the rescaling runs at the start of every
training-mode forward pass, before those weights are used, which gives every step the same weights
as rescaling after the previous step; the weights saved after the last step may exceed it once.

Input: token ids (batch, length), right- or otherwise padded with `pad_index`; the model tells real
words from padding by `tokens != pad_index`. Padding never changes a sentence's logits: padded
positions are zero vectors, each convolution is "wide" (padded by width - 1 on both sides, as Kim pads
sentences with width - 1 zero vectors) and only windows that cover at least one real word take part in
the max. A sentence shorter than a filter is still read whole. So in eval mode a sentence gives the
same logits alone as in any padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TextCNN(nn.Module):
    """Kim's CNN for sentence classification, embeddings trained from scratch (CNN-rand).

    Args:
        vocab_size: rows of the embedding table (the recipe layer sets it from the data's vocabulary).
        num_classes: outputs.
        embed_dim: word vector size (Kim: 300).
        widths: filter widths in words (Kim: 3, 4, 5).
        maps: feature maps per width (Kim: 100).
        dropout: on the pooled features, training only (Kim: 0.5).
        max_norm: the largest L2 norm of a class's weight vector in the last layer (Kim: 3); None: no limit.
        pad_index: the id of padding (the harness's vocabularies put <pad> at 0).
        init_range: word vectors start uniform in [-init_range, init_range] (Kim: 0.25).
    """

    def __init__(self, vocab_size: int, num_classes: int = 2, embed_dim: int = 300,
                 widths: Sequence[int] = (3, 4, 5), maps: int = 100, dropout: float = 0.5,
                 max_norm: float | None = 3.0, pad_index: int = 0, init_range: float = 0.25) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be filter widths >= 1, got {tuple(widths)}")
        self.pad_index = pad_index
        self.widths = tuple(int(w) for w in widths)
        self.max_norm = max_norm
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_index)
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        with torch.no_grad():
            self.embedding.weight[pad_index].zero_()
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, maps, w, padding=w - 1) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(maps * len(self.widths), num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_classes) of token ids (batch, length)."""
        if self.training and self.max_norm is not None:
            with torch.no_grad():  # Kim's constraint, applied before the weights are used (see the module docstring)
                self.head.weight.renorm_(2, 0, self.max_norm)
        real = (tokens != self.pad_index).unsqueeze(1).to(self.embedding.weight.dtype)  # (B, 1, L)
        x = self.embedding(tokens).transpose(1, 2) * real  # (B, E, L), padding exactly zero
        pooled = []
        for conv, width in zip(self.convs, self.widths, strict=True):
            features = F.relu(conv(x))  # (B, maps, L + width - 1): every window touching the sentence
            # Windows made of padding alone must not win the max; features are >= 0 after the ReLU, so
            # zeroing them leaves the max of the real windows (a sentence has at least one).
            covered = F.conv1d(real, real.new_ones(1, 1, width), padding=width - 1) > 0
            pooled.append((features * covered).amax(dim=2))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))
