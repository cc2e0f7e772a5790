"""The networks: the lesson's MLP, and a small CNN beside it (`model/net=mlp|cnn`).

Plain torch (no Lightning). Both take the activation by name, so `model.activation` works with
either, Maxout included; a model's `net` settings name one of NETWORKS (`{"name": "cnn",
"channels": [...]}`; their types: doors/settings.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from mnist_lightning.data import IMAGE_SIZE, NUM_CLASSES


class Maxout(nn.Module):
    """Each unit is the largest of `pieces` linear pieces (Goodfellow et al., 2013): the layer
    before it is `pieces` times as wide, and this keeps the largest of each group of `pieces`
    consecutive units (of channels, after a convolution)."""

    def __init__(self, pieces: int = 2) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, self.pieces)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,  # the lesson's choice
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,  # one learnable slope per layer: +2 parameters in the MLP
    "rrelu": nn.RReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "maxout": Maxout,  # the layers before it widen: model.maxout_pieces times
}


def activation_layer(name: str, maxout_pieces: int = 2) -> tuple[int, Callable[[], nn.Module]]:
    """How many times wider the layer before the activation is (maxout_pieces for Maxout, else
    1), and a maker of the activation."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown model.activation={name!r}; choose one of {', '.join(ACTIVATIONS)}"
        )
    if name == "maxout":
        return maxout_pieces, lambda: Maxout(maxout_pieces)
    return 1, ACTIVATIONS[name]


class MLP(nn.Sequential):
    """Flatten -> Linear(784,128) -> act -> Linear(128,256) -> act -> Linear(256,10): 136,074
    parameters, the lesson's network (269,578 with Maxout of 2 pieces: its hidden layers are
    twice as wide before the maximum brings them back to 128 and 256 units)."""

    def __init__(self, activation: str = "sigmoid", maxout_pieces: int = 2) -> None:
        k, act = activation_layer(activation, maxout_pieces)
        # The lesson's layer names, so logs read `hidden1.weight`, not `1.weight`.
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                hidden1=nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 128 * k),
                act1=act(),
                hidden2=nn.Linear(128, 256 * k),
                act2=act(),
                out=nn.Linear(256, NUM_CLASSES),
            )
        )


class ChannelsLast(nn.Module):
    """Images in channels-last memory order: the CPU's convolution kernels run faster on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def _conv(c_in: int, c_out: int, kernel: int, activation: tuple[int, Callable]) -> nn.Sequential:
    k, act = activation
    return nn.Sequential(
        nn.Conv2d(c_in, c_out * k, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out * k),
        act(),
    )


class CNN(nn.Sequential):
    """A small LeNet-style network: a 5x5 convolution and pooling (28 -> 14 px), two 3x3
    convolutions and pooling (-> 7 px), a third, global average pooling, a linear layer.
    Batch norm after each convolution. 74,578 parameters with the default widths."""

    def __init__(
        self,
        activation: str = "relu",
        channels: Sequence[int] = (24, 48, 96),
        maxout_pieces: int = 2,
    ) -> None:
        act = activation_layer(activation, maxout_pieces)
        c1, c2, c3 = channels
        super().__init__(
            OrderedDict(
                channels_last=ChannelsLast(),
                conv1=_conv(1, c1, 5, act),
                pool1=nn.MaxPool2d(2),
                conv2=_conv(c1, c2, 3, act),
                conv3=_conv(c2, c2, 3, act),
                pool2=nn.MaxPool2d(2),
                conv4=_conv(c2, c3, 3, act),
                pool3=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                out=nn.Linear(c3, NUM_CLASSES),
            )
        )


# model/net=<name> -> the network class (conf/model/net/<name>.yaml holds its settings).
NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}
LESSON_NETWORK = {"name": "mlp"}  # a model's default (conf/model/net/mlp.yaml)


def build_network(
    settings: Mapping[str, Any], activation: str, maxout_pieces: int = 2
) -> nn.Module:
    """The network a model's `net` settings describe: one of NETWORKS by `name`, with its own
    settings (the CNN's `channels`), or, when `_target_` is given, the user's own class, which
    only the user's command line can name (model/net=custom model.net._target_=my_pkg.MyNet)."""
    options = dict(settings)
    if "_target_" in options:
        return instantiate(options, _convert_="all")
    name = options.pop("name", "mlp")
    return NETWORKS[name](activation=activation, maxout_pieces=maxout_pieces, **options)


class TrainedNetwork(nn.Module):
    """The network of a trained MNISTClassifier, as its checkpoint holds it (`net.` weights),
    for the commands that only run it (predict, export, serve): they need neither Lightning nor
    the training metrics. It takes the classifier's settings, with the classifier's types; those
    that only training uses (optimizer, schedule, ...) are not read."""

    def __init__(
        self,
        activation: str = "sigmoid",
        net: Mapping[str, Any] | None = None,
        maxout_pieces: int = 2,
        **training_only: Any,
    ) -> None:
        super().__init__()
        self.net = build_network(net or LESSON_NETWORK, activation, maxout_pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
