"""Matplotlib figures saved beside a run and logged to TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def digit_grid(images: torch.Tensor, titles: Sequence[str], columns: int = 3) -> Figure:
    """Grey digits in a grid, each titled (the lesson's 3x3 look at the data)."""
    rows = max(1, -(-len(images) // columns))
    figure = plt.figure(figsize=(columns * 1.6, rows * 1.7))
    for i, (image, title) in enumerate(zip(images, titles, strict=True)):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.set_title(title)
        axes.axis("off")
        axes.imshow(image.squeeze().cpu(), cmap="gray")
    figure.tight_layout()
    return figure


def save(figure: Figure, path) -> None:
    figure.savefig(path, dpi=100)
    plt.close(figure)
