"""The four MNIST files: find them, decompress them, download them, check them, read them.

MNIST comes as IDX files (a big-endian header, then raw uint8): 60,000 training and 10,000
test images of 28x28 pixels with their labels 0-9. torchvision's `MNIST` reads them into
tensors; everything here makes sure that what it reads is whole and is MNIST.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
from pathlib import Path

import torch

from mnist_lightning.config import PROJECT_ROOT
from mnist_lightning.errors import MNISTDataError

log = logging.getLogger(__name__)

IMAGE_SIZE = 28
NUM_CLASSES = 10

# name -> (IDX magic number, number of dimensions); images are N x 28 x 28 uint8, labels N uint8.
RAW_FILES = {
    "train-images-idx3-ubyte": (0x00000803, 3),
    "train-labels-idx1-ubyte": (0x00000801, 1),
    "t10k-images-idx3-ubyte": (0x00000803, 3),
    "t10k-labels-idx1-ubyte": (0x00000801, 1),
}
# The official images are 60,000 + 10,000; a header claiming far more is lying.
MAX_IDX_ITEMS = 10_000_000


def default_data_dir() -> Path:
    """`$MNIST_DATA_DIR` when set, else `data/` under the project root (never Hydra's run dir)."""
    env = os.environ.get("MNIST_DATA_DIR")
    return Path(env) if env else PROJECT_ROOT / "data"


def _fix_hint(raw_dir: Path) -> str:
    files = ", ".join(f"{name}(.gz)" for name in RAW_FILES)
    return (
        f"Put the four MNIST files ({files}) into {raw_dir}/, or point the project at a folder "
        "that holds MNIST/raw/ with `data.data_dir=<folder>` or the MNIST_DATA_DIR environment "
        "variable."
    )


def read_idx_header(path: Path) -> tuple[int, ...]:
    """Check an uncompressed IDX file's header against its size and return its dimensions.

    Reads only the header, so a lying header can never make us allocate what it claims.
    """
    expected_magic, ndim = RAW_FILES.get(path.name, (None, None))
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4 + 4 * (ndim or 3))
    problem = None
    if size == 0:
        problem = "the file is empty"
    elif len(header) < 4:
        problem = "the file is too short to hold an IDX header"
    else:
        (magic,) = struct.unpack(">I", header[:4])
        if expected_magic is not None and magic != expected_magic:
            problem = f"wrong magic number 0x{magic:08x} (expected 0x{expected_magic:08x})"
        elif expected_magic is None:
            ndim = magic & 0xFF
            if magic >> 8 != 0x08 or not 1 <= ndim <= 3:
                problem = f"not an unsigned-byte IDX file (magic 0x{magic:08x})"
    if problem is None:
        if len(header) < 4 + 4 * ndim:
            problem = "the file is too short to hold an IDX header"
        else:
            dims = struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim])
            items = 1
            for d in dims:
                items *= d
            if ndim == 3 and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
                problem = f"images are {dims[1]}x{dims[2]}, expected 28x28"
            elif dims[0] == 0 or dims[0] > MAX_IDX_ITEMS:
                problem = f"the header claims {dims[0]:,} items"
            elif size != 4 + 4 * ndim + items:
                problem = (
                    f"it is {size:,} bytes but its header promises {4 + 4 * ndim + items:,} "
                    "(truncated or corrupt)"
                )
            else:
                return dims
    raise MNISTDataError(
        f"MNIST file {path} is unusable: {problem}. Delete it and run again to download a fresh "
        "copy, or replace it with a good copy of the official file."
    )


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _decompress(gz_path: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        with gzip.open(gz_path, "rb") as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as err:
        partial.unlink(missing_ok=True)
        raise MNISTDataError(
            f"MNIST file {gz_path} is not a readable gzip file ({err}). Delete it and run again "
            "to download a fresh copy, or replace it with a good copy of the official file."
        ) from None
    partial.replace(target)  # atomic: a crash never leaves a half-written IDX file behind


def locate_raw_files(data_dir: Path) -> Path | None:
    """Return a root holding MNIST/raw/ with all four uncompressed files, or None if missing.

    `.gz` files are decompressed next to themselves, or into a cache folder when `data_dir` is
    read-only, so a read-only folder of `.gz` files works without any network.
    """
    raw_dir = data_dir / "MNIST" / "raw"
    if all((raw_dir / name).is_file() for name in RAW_FILES):
        return data_dir
    if not all(
        (raw_dir / name).is_file() or (raw_dir / f"{name}.gz").is_file() for name in RAW_FILES
    ):
        return None
    root = data_dir
    if not _writable(raw_dir):
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist_lightning"
        root = cache
        log.info("%s is read-only; decompressing MNIST into %s", raw_dir, cache / "MNIST" / "raw")
    out_dir = root / "MNIST" / "raw"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        if (raw_dir / name).is_file():
            if out_dir != raw_dir and not (out_dir / name).is_file():
                shutil.copyfile(raw_dir / name, out_dir / name)
        elif not (out_dir / name).is_file():
            _decompress(raw_dir / f"{name}.gz", out_dir / name)
    return root


def _download(data_dir: Path) -> None:
    from torchvision.datasets import MNIST

    raw_dir = data_dir / "MNIST" / "raw"
    if not _writable(raw_dir):
        raise MNISTDataError(
            f"MNIST is not in {raw_dir} and that folder cannot be written, so it cannot be "
            f"downloaded there. {_fix_hint(raw_dir)}"
        )

    class WorkingMirrorFirst(MNIST):
        # yann.lecun.com now serves an error page that fails the MD5 check; some torchvision
        # releases list it first and give up before trying the next mirror.
        mirrors = sorted(MNIST.mirrors, key=lambda url: "lecun" in url)

    log.info("MNIST not found in %s; downloading it", raw_dir)
    try:
        WorkingMirrorFirst(str(data_dir), train=True, download=True)
    except Exception as err:  # any network, HTTP or checksum failure ends the same way
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MNISTDataError(
            f"Could not download MNIST ({first_line}). {_fix_hint(raw_dir)}"
        ) from None


def ensure_raw_files(data_dir: str | Path, download: bool = True) -> Path:
    """Find (decompress, or download) and check the four files; return the root holding MNIST/raw/."""
    data_dir = Path(data_dir).expanduser().resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise MNISTDataError(
            f"data.data_dir={data_dir} is a file; it must be a folder holding MNIST/raw/."
        )
    root = locate_raw_files(data_dir)
    if root is None and download:
        _download(data_dir)
        root = locate_raw_files(data_dir)
    if root is None:
        raise MNISTDataError(f"MNIST is missing. {_fix_hint(data_dir / 'MNIST' / 'raw')}")
    raw_dir = root / "MNIST" / "raw"
    counts = {name: read_idx_header(raw_dir / name)[0] for name in RAW_FILES}
    for split in ("train", "t10k"):
        n_images, n_labels = (
            counts[f"{split}-images-idx3-ubyte"],
            counts[f"{split}-labels-idx1-ubyte"],
        )
        if n_images != n_labels:
            raise MNISTDataError(
                f"{raw_dir}/{split}-images-idx3-ubyte holds {n_images:,} images but "
                f"{split}-labels-idx1-ubyte holds {n_labels:,} labels; one of them is from another "
                "dataset or corrupt. Replace both with good copies of the official files."
            )
    return root


def load_mnist(
    data_dir: str | Path, download: bool = True
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """MNIST as {"train": (images, labels), "test": (...)}: images uint8 [N, 1, 28, 28], labels
    int64 [N], read through torchvision's `MNIST` after the files passed their checks."""
    from torchvision.datasets import MNIST

    root = ensure_raw_files(data_dir, download)
    raw_dir = root / "MNIST" / "raw"
    splits = {}
    for split, train in (("train", True), ("test", False)):
        dataset = MNIST(str(root), train=train, download=False)
        labels = dataset.targets
        if labels.numel() and int(labels.max()) >= NUM_CLASSES:
            name = f"{'train' if train else 't10k'}-labels-idx1-ubyte"
            raise MNISTDataError(
                f"MNIST file {raw_dir / name} holds label {int(labels.max())}; labels must be 0-9. "
                "Replace it with a good copy of the official file."
            )
        splits[split] = (dataset.data.unsqueeze(1).contiguous(), labels)
    return splits
