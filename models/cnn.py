"""A small CNN for 28x28 single-channel images (MNIST, Fashion-MNIST).

Two conv blocks (conv3x3 -> BatchNorm -> ReLU -> maxpool) then a small classifier. About 0.2M
parameters and ~3 MMAC per image: one MNIST epoch takes ~12 s on a 2-core CPU.
"""

from torch import Tensor, nn


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class MnistCNN(nn.Module):
    """conv(1->c1) -> pool -> conv(c1->c2) -> pool -> Linear(c2*7*7 -> hidden) -> Linear(-> num_classes).

    Args:
        in_channels: image channels (1 for MNIST).
        channels: widths of the two conv blocks.
        hidden: width of the hidden fully connected layer.
        num_classes: number of outputs (logits).
        dropout: drop probability before the last layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
        num_classes: int = 10,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(_conv_block(in_channels, c1), _conv_block(c1, c2))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
