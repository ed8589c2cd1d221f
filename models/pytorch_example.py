"""The network of pytorch/examples `mnist/main.py`, layer for layer, for a recipe that reproduces that set-up.

conv3x3(1->32) -> ReLU -> conv3x3(32->64) -> ReLU -> maxpool 2 -> dropout 0.25 -> Linear(9216 -> 128)
-> ReLU -> dropout 0.5 -> Linear(128 -> 10) -> log_softmax: about 1.2M parameters. It outputs
log-probabilities, so its loss is `nll` (NLLLoss), as in the example.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Net(nn.Module):
    """pytorch/examples' MNIST `Net`; the layer names are the example's, so its state_dict loads here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)  # 64 channels x 12 x 12 after two unpadded 3x3 convs and the pool
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        x = self.fc2(self.dropout2(x))
        return F.log_softmax(x, dim=1)
