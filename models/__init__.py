"""Model definitions. This package imports nothing from `harness`: a model is a plain `nn.Module`.

`MODELS` maps the short names a recipe may use (`model.name: cnn`) to classes; any other model
is named by import path, `package.module:Class`.
"""

from models.cnn import MnistCNN
from models.digits_cnn import DigitsCNN
from models.gpt import GPT
from models.mlp import MLP
from models.pytorch_example import Net
from models.residual_mlp import ResidualMLP
from models.resnet import ResNet
from models.text_cnn import TextCNN
from models.text_transformer import TextTransformer

MODELS = {
    "mlp": MLP,
    "cnn": MnistCNN,
    "resnet": ResNet,
    "pytorch_example_net": Net,  # pytorch/examples mnist/main.py
    "digits_cnn": DigitsCNN,
    "gpt": GPT,  # a character-level language model: (B, T) token ids -> (B, T, vocab_size) logits
    "residual_mlp": ResidualMLP,  # pre-norm residual blocks in a `blocks` list: what FSDP shards
    "text_cnn": TextCNN,  # Kim (2014) CNN-rand, token ids in
    "text_transformer": TextTransformer,  # a small transformer encoder, token ids in
}

__all__ = ["GPT", "MLP", "MODELS", "DigitsCNN", "MnistCNN", "Net", "ResNet", "ResidualMLP", "TextCNN",
           "TextTransformer"]
