"""Matplotlib figures saved beside a run and logged to TensorBoard, each rendered once."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
# Text is text: names read back from a sweep folder (a job's overrides, a layer's name) are
# never matplotlib's mathematics ($\frac{$ would stop the figure).
matplotlib.rcParams["text.parse_math"] = False

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from mnist_lightning.atomic import write_atomically  # noqa: E402

if TYPE_CHECKING:  # a sweep's summary draws without loading torch
    import torch


def digit_grid(images: torch.Tensor, titles: Sequence[str], columns: int = 3) -> Figure:
    """Grey digits in a grid, each titled (the lesson's 3x3 look at the data).

    One axes holding one tiled image, not a subplot per digit: as clear, and ten times faster
    to draw for the 36-digit grid of misclassified test images.
    """
    images = images.detach().float().cpu().reshape(-1, 28, 28)
    count = len(images)
    rows = max(1, -(-count // columns))
    cell = 34  # 28 px digit + 6 px gap, room for the title above
    sheet = np.full((rows * cell + 6, columns * cell), np.nan, dtype=np.float32)
    for i, image in enumerate(images):
        low, high = float(image.min()), float(image.max())
        scaled = (image.numpy() - low) / (high - low if high > low else 1.0)
        row, column = divmod(i, columns)
        sheet[row * cell + 6 : row * cell + 34, column * cell + 3 : column * cell + 31] = scaled
    figure = plt.figure(figsize=(columns * 1.1, rows * 1.25 + 0.1))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(np.nan_to_num(sheet, nan=1.0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for i, title in enumerate(titles[:count]):
        row, column = divmod(i, columns)
        axes.text(column * cell + 17, row * cell + 5, title, ha="center", va="bottom", fontsize=9)
    axes.axis("off")
    return figure


def render(figure: Figure) -> np.ndarray:
    """Draw a figure once into an RGB array (for both the PNG file and TensorBoard)."""
    figure.set_dpi(100)
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return image


def save(figure: Figure | np.ndarray, path: str | Path) -> np.ndarray:
    """Save a figure (or an already rendered one) as PNG; returns the RGB array."""
    image = figure if isinstance(figure, np.ndarray) else render(figure)
    write_atomically(path, lambda temporary: Image.fromarray(image).save(temporary, format="PNG"))
    return image


def publish(figure: Figure, path: str | Path, writer=None, tag: str = "", step: int = 0) -> None:
    """Render once; write the PNG and, when given a TensorBoard writer, the image there."""
    image = save(figure, path)
    if writer is not None:
        writer.add_image(tag, image, step, dataformats="HWC")


def gradient_flow(panels: dict[str, dict[str, list[float]]]) -> Figure:
    """The lesson's vanishing gradient as a picture: for each run (a panel, titled by what sets it
    apart, e.g. its activation), the gradient norm of each layer's weights over the first epoch,
    one line per layer, on a shared log scale."""
    count = len(panels)
    columns = min(count, 5)
    rows = -(-count // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 2.8 * rows), sharey=True, squeeze=False
    )
    for ax, (title, norms) in zip(axes.flat, panels.items(), strict=False):
        steps = norms.get("step", [])
        for layer, values in norms.items():
            if layer != "step" and len(values) == len(steps):
                ax.plot(steps, values, label=layer.removesuffix(".weight"), linewidth=1.4)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step (first epoch)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[count:]:
        ax.axis("off")
    axes[0][0].set_ylabel("gradient norm of the layer's weights")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def render_png(figure: Figure) -> bytes:
    """A figure as PNG bytes (to show in a notebook)."""
    buffer = io.BytesIO()
    Image.fromarray(render(figure)).save(buffer, format="PNG")
    return buffer.getvalue()


def sweep_summary(rows: list[dict[str, Any]], label: Callable[[str], str], shown: str = ""):
    """A sweep's summary (report.py): validation accuracy against the images trained on and
    against the seconds of training (at every validation: val_check_interval may make it
    several an epoch), and the final test accuracy of each job (`rows`, best first); `label`
    shortens a job's overrides, `shown` says how many of the jobs these are."""
    figure, (by_images, by_seconds, bars) = plt.subplots(
        1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [2, 2, 2]}
    )
    for row in rows:
        history = row["history"]
        accuracy = history.get("val_check/val/acc", [])
        if not accuracy:
            continue
        for ax, x in ((by_images, "val_check/images"), (by_seconds, "val_check/seconds")):
            if len(history.get(x, [])) == len(accuracy):
                ax.plot(
                    history[x], accuracy, marker="o", markersize=2.5, label=label(row["overrides"])
                )
    images = [v for r in rows for v in r["history"].get("val_check/images", [])]
    if images and max(images) > 100 * max(min(images), 1):
        by_images.set_xscale("log")  # stochastic and batch gradient descent side by side
    by_images.set(xlabel="images trained on", ylabel="val/acc", title="validation accuracy" + shown)
    by_seconds.set(xlabel="seconds of training", ylabel="val/acc", title="against time")
    for ax in (by_images, by_seconds):
        ax.grid(alpha=0.3)
    if by_images.lines:
        by_images.legend(fontsize=7)
    done = [r for r in rows if r["status"] == "ok" and r.get("test/acc") is not None]
    bars.barh(
        [label(r["overrides"]) for r in done][::-1],
        [r["test/acc"] for r in done][::-1],
        color="tab:blue",
    )
    for y, row in enumerate(done[::-1]):
        bars.text(row["test/acc"], y, f" {row['test/acc']:.4f}", va="center", fontsize=8)
    if done:
        low = min(r["test/acc"] for r in done)
        bars.set_xlim(max(0.0, low - 0.05), 1.0)
    bars.set(xlabel="test/acc", title="final test accuracy")
    bars.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    return figure
