"""The lesson's network: Flatten -> Linear(784,128) -> act -> Linear(128,256) -> act -> Linear(256,10).

Plain torch (no Lightning), so that config checks, export and predict can use it cheaply.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from mnist_lightning.mnist_files import IMAGE_SIZE, NUM_CLASSES

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,  # the lesson's choice
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,  # one learnable slope per layer: +2 parameters
    "rrelu": nn.RReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class MLP(nn.Sequential):
    """Flatten -> Linear(784,128) -> act -> Linear(128,256) -> act -> Linear(256,10)."""

    def __init__(self, activation: str = "sigmoid") -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown model.activation={activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        act = ACTIVATIONS[activation]
        # The lesson's layer names, so logs read `hidden1.weight`, not `1.weight`.
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                hidden1=nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 128),
                act1=act(),
                hidden2=nn.Linear(128, 256),
                act2=act(),
                out=nn.Linear(256, NUM_CLASSES),
            )
        )
