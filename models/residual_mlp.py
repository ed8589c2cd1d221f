"""A residual MLP: a stack of identical pre-norm blocks, the shape of model that sharding and activation
checkpointing act on block by block (MNIST: 1x28x28 -> 784 inputs)."""

from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """x + Dropout(Linear(GELU(Linear(LayerNorm(x))))): a transformer block's MLP half."""

    def __init__(self, width: int, expansion: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, expansion * width)
        self.down = nn.Linear(expansion * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.down(nn.functional.gelu(self.up(self.norm(x)))))


class ResidualMLP(nn.Module):
    """Flatten -> Linear(in_features, width) -> `depth` ResidualBlocks -> LayerNorm -> Linear(width, num_classes).

    The blocks are the `blocks` ModuleList: the units `trainer.strategy: fsdp` shards one by one and
    `trainer.activation_checkpointing: true` recomputes in the backward pass.

    Args:
        in_features: size of one flattened input (784 for MNIST).
        width: the residual stream's width.
        depth: number of blocks.
        expansion: a block's hidden width is expansion * width.
        num_classes: number of outputs (logits).
        dropout: drop probability on each block's output (0 disables it).
    """

    def __init__(self, in_features: int = 784, width: int = 256, depth: int = 4, expansion: int = 4,
                 num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width))
        self.blocks = nn.ModuleList(ResidualBlock(width, expansion, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
