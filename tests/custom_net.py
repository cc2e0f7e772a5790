"""A network of a user's own, for the tests: named only on a command line."""

from torch import nn


class TinyNet(nn.Sequential):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
