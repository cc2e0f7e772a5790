"""The image door: the user's image files (predict) and the images in requests (serve).

An image is decoded only within a budget known from its header before any pixel is decoded:
its sides, and what decoding it really allocates (the decoded image, the copy that an EXIF
rotation makes, the float copy of a 16/32-bit image; `decode_cost`). Any image that PIL cannot
read or decode, whatever the reason, is this image's ImageError alone (one line); a folder's
file names are taken as the bytes they are (`shown_name` for lines and result files).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_lightning.data.preprocess import FRAMINGS, WORKING_SIZE
from mnist_lightning.errors import ImageError, ImageTooLarge, NotAnImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# What decoding an image may cost (decode_cost): predict's default for the user's own files;
# serve sets a smaller one for requests.
MAX_DECODED_BYTES = 256_000_000
BYTES_PER_PIXEL = {"1": 1 / 8, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3}
BYTES_PER_PIXEL |= {"LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4}
BYTES_PER_PIXEL |= {"F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
HIGH_DEPTH = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # read through one float copy (mode F)
EXIF_ORIENTATION = 0x0112


def decode_cost(image: Image.Image) -> float:
    """The bytes that decoding `image` and making it a digit allocate at their peak, from its
    header: the decoded pixels (after JPEG's reduced-size decoding; only the first frame of an
    animation or a multi-page TIFF is decoded), a second copy when EXIF says to rotate it, and
    the float copy of a 16/32-bit image (data/preprocess.py)."""
    width, height = image.size
    per_pixel = BYTES_PER_PIXEL.get(image.mode, 4)
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        per_pixel *= 2
    if image.mode in HIGH_DEPTH:
        per_pixel += 4
    return width * height * per_pixel


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
        decoded = decode_cost(image)
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


def image_to_digit(
    image: Image.Image, name: str = "the image", framing: str = "digit"
) -> torch.Tensor:
    """`to_mnist` (or, for a dataset of products, `to_product`), with any failure of an unusual
    image (a colour mode PIL cannot convert to grey) as that image's ImageError."""
    try:
        return FRAMINGS[framing](image)
    except ImageError as error:
        raise ImageError(f"{name}: {error}") from None
    except Exception as error:  # noqa: BLE001 - see decode_image
        raise ImageError(
            f"{name}: the image cannot be read as a digit ({_reason(error)})"
        ) from None


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


def shown_name(path: str | Path) -> str:
    """A file name as text that can be printed and written (a name that is not UTF-8 keeps its
    bytes as \\x escapes)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")
