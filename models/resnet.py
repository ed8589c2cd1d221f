"""A small ResNet for 32x32 images (CIFAR-10), after He et al. 2016, section 4.2.

A 3x3 stem, then three stages of `n` BasicBlocks at widths w, 2w, 4w (the 2nd and 3rd halve the
resolution), global average pooling and one linear layer: depth 6n + 2. ResNet-20 (n=3, w=16) has
0.27M parameters and 41 MMAC per 32x32 image; ResNet-8 (n=1) 0.08M and 12.5 MMAC (counted with
torch.utils.flop_counter). Shortcuts that change shape are 1x1 convolutions with BatchNorm (the
paper's option B).

Module names: `features` (everything up to the pooled vector) and `classifier` (dropout, linear),
so a recipe can freeze `features` or re-initialise `classifier` for transfer learning.
"""

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the (projected) input, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        # bias=False: BatchNorm's shift makes a conv bias redundant.
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of depth 6n + 2.

    Args:
        depth: 8, 14, 20, 32, 44, 56, ... (6n + 2).
        in_channels: image channels (3 for CIFAR-10, 1 for MNIST-like data).
        num_classes: number of outputs (logits).
        width: channels of the first stage; the next two have 2x and 4x.
        dropout: drop probability on the pooled features, before the linear layer (0: none).
    """

    def __init__(
        self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: int = 16, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
