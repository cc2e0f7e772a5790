"""MNIST on disk and in memory: the IDX files (mnist_files.py), MNISTDataModule (datamodule.py),
the resumable training order (order.py), augmentation on the device (augment.py), and the
preprocessing that makes a user's image look like an MNIST digit (preprocess.py). Here: what
every command that runs a network shares, without Lightning (predict, export, serve)."""

from __future__ import annotations

import torch

IMAGE_SIZE = 28  # MNIST's digits are 28x28 grey images
NUM_CLASSES = 10  # of the digits 0-9

# Where the data is and comes from: given by each command, never kept in a checkpoint.
DATA_SOURCE = ("data_dir", "download", "mirrors")

# The training set's pixel mean and standard deviation (of values in [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def normalized(x: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """Images in [0, 1] at the training set's zero mean and unit deviation (also inside an
    exported model: TorchScript takes the constants as default arguments, not as globals)."""
    return (x - mean) / std


def to_model_input(
    images: torch.Tensor,
    normalize: bool = True,
    augment=None,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
) -> torch.Tensor:
    """uint8 [N,1,28,28] -> float32 in [0,1] (the lesson's ToTensor) -> augmented (training
    only) -> normalised by the dataset's mean and deviation."""
    x = images.float().div_(255)
    if augment is not None:
        x = augment(x)
    return normalized(x, mean, std) if normalize else x


def already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A DataLoader's collate_fn for a dataset whose `__getitems__` returns a batch already."""
    return batch
