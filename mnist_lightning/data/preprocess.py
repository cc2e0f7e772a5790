"""Turn a real photo or scan of a digit into what MNIST looks like (`to_mnist`), or a photo of a
product into what Fashion-MNIST looks like (`to_product`).

MNIST digits are white on black, size-normalised to fit a 20x20 box (aspect ratio kept) and
placed in a 28x28 field with their centre of mass at the centre. `to_mnist` does the same to
any image: grayscale at any bit depth (or the alpha channel of a transparent PNG), inverted
when the paper is lighter than the ink, background removed, cropped to the ink's bounding box,
scaled, centred. An image that already looks like MNIST is passed on as it is.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mnist_lightning.errors import ImageError

WORKING_SIZE = 512  # big photos are shrunk first: the result is 28x28 anyway
MIN_CONTRAST = 24  # ink must differ from the paper by this much (of 255)


def high_depth_levels(image: Image.Image) -> np.ndarray:
    """float32 HxW in [0, 255] for 16/32-bit integer and float images: integers scaled down
    from their full range, floats from [0, 1] (a resized [0, 1] image overshoots a little) or
    [0, 255]. PIL's own conversion to 8 bits clips them instead. One float copy of the image
    (PIL's mode F, 4 bytes a pixel), shrunk before anything else: what the decode budget counts
    (doors/images.py)."""
    floats = image if image.mode == "F" else image.convert("F")
    low, high = floats.getextrema()
    if image.mode == "F":
        top = 1.0 if high <= 2.0 else 255.0
    else:  # I;16*, I
        top = 255.0 if image.mode == "I" and high <= 255 else 65535.0
    width, height = floats.size
    if max(height, width) > WORKING_SIZE:  # shrink big images first: the result is 28x28
        scale = WORKING_SIZE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        floats = floats.resize(size, Image.BOX)
    values = np.nan_to_num(np.asarray(floats, dtype=np.float32))
    return np.clip(values / top * 255.0, 0, 255).astype(np.float32)


def ink_map(image: Image.Image) -> np.ndarray:
    """float32 HxW in [0, 255]: how much ink each pixel holds (white digit on black)."""
    if image.mode.startswith("I") or image.mode == "F":
        gray = high_depth_levels(image)
    else:
        image.thumbnail((WORKING_SIZE, WORKING_SIZE))
        transparent = image.mode in ("RGBA", "LA", "PA")
        if transparent or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
            if (alpha < 128).mean() > 0.1:  # a transparent background: the opaque pixels are ink
                return alpha
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        gray = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # light paper, dark ink: make it MNIST's white on black
        gray = 255.0 - gray
    return gray


def looks_like_mnist(ink: np.ndarray) -> bool:
    """28x28, light ink on a black background, centred by mass: already what MNIST looks like,
    so it goes to the model as it is (re-cropping and re-scaling it would only blur it)."""
    if ink.shape != (28, 28) or ink.max() < 200:  # faint ink is levelled below
        return False
    border = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
    if np.median(border) > 32:  # MNIST's background is black
        return False
    weights = ink / ink.sum()
    center = [float((weights.sum(axis=1 - axis) * np.arange(28)).sum()) for axis in (0, 1)]
    return all(abs(c - 13.75) <= 2.5 for c in center)


def to_mnist(image: Image.Image) -> torch.Tensor:
    """uint8 [1, 28, 28]: the digit as MNIST would have it. Raises ImageError on a blank image."""
    ink = ink_map(image)
    if looks_like_mnist(ink):
        return torch.from_numpy(np.rint(ink).clip(0, 255).astype(np.uint8))[None]
    background = float(np.median(ink))
    ink = np.clip(ink - background, 0, None)  # paper (and its tint or shading) becomes black
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ImageError("no digit found: the image has no ink (blank, or too little contrast)")
    # Levels: the faintest 15% (paper texture, sensor noise, shadows) to black, ink to full white.
    ink = np.clip((ink / peak - 0.15) / 0.85, 0, 1) * 255.0
    rows, cols = np.nonzero(ink > 0.1 * 255)  # the digit's bounding box, ignoring faint specks
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]

    # Longer side to 20 px, aspect ratio kept; antialiased like MNIST's original scaling.
    height, width = digit.shape
    scale = 20.0 / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    digit_t = torch.from_numpy(np.ascontiguousarray(digit))[None, None]
    small = torch.nn.functional.interpolate(
        digit_t, size=size, mode="area" if scale < 1 else "bilinear"
    )[0, 0]

    # Paste into 28x28 so that the centre of mass lands on the centre (14, 14).
    total = small.sum().clamp_min(1e-6)
    ys, xs = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    center_y = float((small.sum(1) * ys).sum() / total)
    center_x = float((small.sum(0) * xs).sum() / total)
    top = int(round(14 - center_y - 0.5))
    left = int(round(14 - center_x - 0.5))
    field = torch.zeros(28 + 2 * 28, 28 + 2 * 28)  # margins so any shift fits, then cut out
    field[28 + top : 28 + top + size[0], 28 + left : 28 + left + size[1]] = small
    field = field[28:56, 28:56]
    return field.round().clamp(0, 255).to(torch.uint8)[None]


def to_product(image: Image.Image) -> torch.Tensor:
    """uint8 [1, 28, 28]: a photo of a product as Fashion-MNIST has its images (Zalando's
    processing): light on black (a white table becomes the black background), its grey levels
    kept, trimmed to the product, its longer side scaled to the whole 28 px, centred in the
    frame. Raises ImageError on a blank image."""
    ink = ink_map(image)
    ink = np.clip(ink - float(np.median(ink[[0, -1]])), 0, None)  # the background goes black
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ImageError("no product found: the image is blank, or has too little contrast")
    rows, cols = np.nonzero(ink > 0.05 * peak)  # the product's box, ignoring faint specks
    product = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = product.shape
    scale = 28.0 / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(product))[None, None],
        size=size,
        mode="area" if scale < 1 else "bilinear",
    )[0, 0]
    field = torch.zeros(28, 28)
    top, left = (28 - size[0]) // 2, (28 - size[1]) // 2
    field[top : top + size[0], left : left + size[1]] = small
    return field.round().clamp(0, 255).to(torch.uint8)[None]


FRAMINGS = {"digit": to_mnist, "product": to_product}  # by a dataset's framing (datasets.py)
