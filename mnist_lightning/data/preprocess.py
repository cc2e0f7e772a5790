"""Turn a real photo or scan of a digit into what MNIST looks like.

MNIST digits are white on black, size-normalised to fit a 20x20 box (aspect ratio kept) and
placed in a 28x28 field with their centre of mass at the centre. `to_mnist` does the same to
any image: grayscale at any bit depth (or the alpha channel of a transparent PNG), inverted
when the paper is lighter than the ink, background removed, cropped to the ink's bounding box,
scaled, centred. An image that already looks like MNIST is passed on as it is.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_lightning.errors import ImageError, ImageTooLarge, NotAnImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
WORKING_SIZE = 512  # big photos are shrunk first: the result is 28x28 anyway
MIN_CONTRAST = 24  # ink must differ from the paper by this much (of 255)
# What decoding an image may cost, known from its header before any pixel is decoded: its
# decoded size (width x height x bytes per pixel, after JPEG's reduced-size decoding; only the
# first frame of an animation or a multi-page TIFF is decoded). predict's default for the
# user's own files; serve sets a smaller one for requests.
MAX_DECODED_BYTES = 256_000_000
BYTES_PER_PIXEL = {"1": 1 / 8, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3}
BYTES_PER_PIXEL |= {"LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4}
BYTES_PER_PIXEL |= {"F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def load_image(path: str | Path, max_decoded_bytes: float = MAX_DECODED_BYTES) -> Image.Image:
    """Open and fully decode an image file, or raise ImageError with the reason."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file (or a broken link or a link loop)"
        raise ImageError(f"{path}: not an image file: {what}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    with path.open("rb") as f:
        return decode_image(f, name=str(path), max_decoded_bytes=max_decoded_bytes)


def decode_image(
    source: BinaryIO | bytes,
    name: str = "the image",
    max_side: int | None = None,
    max_decoded_bytes: float = MAX_DECODED_BYTES,
) -> Image.Image:
    """Decode an image from a file object or bytes, or raise ImageError with the reason.

    Its size is read from the header and refused (over `max_side` pixels a side, or more than
    `max_decoded_bytes` decoded) before the pixels are decoded, so a decompression bomb never
    reaches memory. Any image PIL cannot decode, whatever the reason (a damaged EXIF block, a
    colour mode it cannot convert), is this image's error alone.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
        source = io.BytesIO(source)
    try:
        image = Image.open(source)
        image.draft("L", (WORKING_SIZE, WORKING_SIZE))  # JPEG: decode at a reduced size, fast
        width, height = image.size
        if max_side and max(width, height) > max_side:
            raise ImageTooLarge(
                f"{name}: {width}x{height} pixels; at most {max_side} pixels a side"
            )
        decoded = width * height * BYTES_PER_PIXEL.get(image.mode, 4)
        if decoded > max_decoded_bytes:
            raise ImageTooLarge(
                f"{name}: {width}x{height} {image.mode} pixels would take {decoded / 1e6:.0f} MB "
                f"to decode; at most {max_decoded_bytes / 1e6:.0f} MB"
            )
        image.load()  # decode now, so a truncated file fails here
        return ImageOps.exif_transpose(image)  # phone photos carry their rotation in EXIF
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise NotAnImage(
            f"{name}: not an image file PIL can read (PNG, JPEG, BMP, GIF, TIFF, WebP)"
        ) from None
    except Image.DecompressionBombError as error:  # PIL's own guard, at open: a size, not damage
        limit = str(error).partition(", could be")[0]
        raise ImageTooLarge(f"{name}: too many pixels to decode ({limit}); shrink it") from None
    except Exception as error:  # noqa: BLE001 - hostile bytes fail in many ways; each is theirs
        raise ImageError(f"{name}: the image is damaged or truncated ({_reason(error)})") from None


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())[:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def image_to_digit(image: Image.Image, name: str = "the image") -> torch.Tensor:
    """`to_mnist`, with any failure of an unusual image (a colour mode PIL cannot convert to
    grey) as that image's ImageError."""
    try:
        return to_mnist(image)
    except ImageError as error:
        raise ImageError(f"{name}: {error}") from None
    except Exception as error:  # noqa: BLE001 - see decode_image
        raise ImageError(
            f"{name}: the image cannot be read as a digit ({_reason(error)})"
        ) from None


def high_depth_levels(image: Image.Image) -> np.ndarray:
    """float32 HxW in [0, 255] for 16/32-bit integer and float images: integers scaled down
    from their full range, floats from [0, 1] (a resized [0, 1] image overshoots a little) or
    [0, 255]. PIL's own conversion to 8 bits clips them instead."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.mode == "F":
        top = 1.0 if values.max() <= 2.0 else 255.0
    else:  # I;16*, I
        top = 255.0 if image.mode == "I" and values.max() <= 255 else 65535.0
    levels = np.clip(values / top * 255.0, 0, 255).astype(np.float32)
    height, width = levels.shape
    if max(height, width) > WORKING_SIZE:  # shrink big images first: the result is 28x28
        scale = WORKING_SIZE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        levels = np.asarray(Image.fromarray(levels, mode="F").resize(size, Image.BOX), np.float32)
    return levels


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


def find_images(inputs: list[str]) -> tuple[list[Path], int]:
    """Image files named directly or found (recursively) in folders, and how many non-images
    the folders held. A named file is always tried, whatever its extension; in a folder, an
    entry with an image's name that is not a regular file (a folder), and any broken link or
    link loop, is listed too, so that it gets its own error line rather than being skipped."""
    found, skipped = [], 0
    for item in inputs:
        path = Path(item).expanduser()
        if not path.is_dir():
            found.append(path)
            continue
        # Links to folders are not followed: a link loop cannot make the search endless.
        for folder, folders, files in os.walk(path, followlinks=False):
            folders.sort()
            for candidate in sorted(Path(folder) / name for name in [*files, *folders]):
                image_name = candidate.suffix.lower() in IMAGE_SUFFIXES
                if image_name or (candidate.name in files and not candidate.is_file()):
                    found.append(candidate)
                elif candidate.name in files:
                    skipped += 1
    return found, skipped
