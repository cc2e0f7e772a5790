"""Digits as users make them, from MNIST-format images: for predict's tests and its real check.

Each 28x28 digit is upscaled to 100-400 px, inverted to dark ink on light paper, shifted off
centre on a larger sheet and saved as RGB PNG, JPEG, transparent RGBA PNG, BMP or WebP.

    python benchmarks/user_digits.py <out folder> [count]   # from $MNIST_DATA_DIR's test set
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("rgb.png", "photo.jpg", "transparent.png", "scan.bmp", "web.webp")


def user_style(image28: np.ndarray, rng: np.random.Generator, kind: str) -> Image.Image:
    """uint8 28x28 white-on-black -> a user-style picture of the same digit."""
    size = int(rng.integers(100, 401))
    digit = Image.fromarray(image28, mode="L").resize((size, size), Image.BICUBIC)
    sheet_w, sheet_h = size + int(rng.integers(20, 200)), size + int(rng.integers(20, 200))
    left, top = int(rng.integers(0, sheet_w - size + 1)), int(rng.integers(0, sheet_h - size + 1))
    ink = Image.new("L", (sheet_w, sheet_h), 0)
    ink.paste(digit, (left, top))
    if kind == "transparent.png":  # black strokes on a transparent background
        rgba = Image.new("RGBA", ink.size, (0, 0, 0, 0))
        rgba.putalpha(ink)
        return rgba
    paper = np.array([240, 236, 225]) + rng.integers(-10, 10, 3)  # slightly tinted paper
    pen = np.array([30, 40, 90])  # blue-black ink
    alpha = np.asarray(ink, dtype=np.float32)[..., None] / 255
    rgb = paper * (1 - alpha) + pen * alpha + rng.normal(0, 3, (sheet_h, sheet_w, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def make_user_digits(
    images: np.ndarray, labels: np.ndarray, folder: Path, seed: int = 0
) -> list[tuple[Path, int]]:
    """Save one user-style file per digit; returns (path, true label) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        kind = KINDS[i % len(KINDS)]
        path = folder / f"{i:05d}_{kind}"
        picture = user_style(image, rng, kind)
        picture.save(path, **({"quality": 90} if kind.endswith("jpg") else {}))
        made.append((path, int(label)))
    return made


if __name__ == "__main__":
    from mnist_lightning.data.mnist_files import load_mnist

    out, count = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 500
    images, labels = load_mnist(os.environ.get("MNIST_DATA_DIR", "data"), download=False)["test"]
    pick = np.random.default_rng(1).choice(len(labels), count, replace=False)
    made = make_user_digits(images[pick, 0].numpy(), labels[pick].numpy(), out)
    (out / "labels.csv").write_text("file,label\n" + "".join(f"{p},{y}\n" for p, y in made))
    print(f"wrote {len(made)} images and labels.csv to {out}")
