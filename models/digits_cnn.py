"""A small CNN for tiny single-channel images: scikit-learn's 8x8 digits.

Three 3x3 convolutions (BatchNorm, ReLU), two 2x2 max-pools: 8x8 -> 4x4 -> 2x2, then one linear
layer. About 31k parameters with the default widths.
"""

from torch import Tensor, nn


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """conv(in->c1) -> conv(c1->c1) -> pool -> conv(c1->c2) -> pool -> Dropout -> Linear(c2*(s/4)^2 -> classes).

    Args:
        in_channels: image channels (1 for digits).
        channels: widths of the first two and of the third convolution.
        image_size: height = width of the input, divisible by 4 (8 for digits).
        num_classes: number of outputs (logits).
        dropout: drop probability before the last layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int] = (32, 64),
        image_size: int = 8,
        num_classes: int = 10,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 pools), got {image_size}")
        c1, c2 = channels
        self.features = nn.Sequential(
            *_conv(in_channels, c1), *_conv(c1, c1), nn.MaxPool2d(2), *_conv(c1, c2), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * (image_size // 4) ** 2, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
