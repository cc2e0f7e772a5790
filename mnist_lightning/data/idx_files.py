"""The four IDX files' checks (of MNIST, or another dataset of its format: datasets.py): what
each may be (the dataset's file, or a stand-in the tests declare), its IDX header against its size before anything is read, and its MD5, of the
uncompressed file (torchvision knows only the .gz's), so a local or re-compressed copy is
checked like a download. Any failure is one line (mnist_files.py finds and downloads them)."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from torchvision.datasets.utils import calculate_md5

from mnist_lightning.data import IMAGE_SIZE
from mnist_lightning.data.datasets import MNIST, ROLES, IdxDataset
from mnist_lightning.errors import MNISTDataError

RAW_FILES = tuple(MNIST.file(role) for role in ROLES)  # MNIST's
# The test suite's small stand-in files, accepted beside the official ones when this variable
# names them (a JSON object: file name -> {"md5", "items"}). Only the tests set it: nothing a
# config, a run folder or a checkpoint holds can add to the files accepted as MNIST.
TEST_FILES_VARIABLE = "MNIST_LIGHTNING_TEST_FILES"
MAX_IDX_ITEMS = 10_000_000  # the official files hold 60,000 + 10,000; a header claiming more lies


def unusable(path: Path, problem: str, dataset: IdxDataset = MNIST) -> MNISTDataError:
    return MNISTDataError(
        f"{dataset.folder} file {path} is {problem}. Delete it and run again to download a fresh copy, or "
        "replace it with a good copy of the official file."
    )


def read_idx_header(path: Path, images: bool | None = None) -> tuple[int, ...]:
    """Check one of the four files' IDX header against the file's size; return its dimensions.

    Reads only the header, so a lying header can never make us allocate what it claims
    (torchvision's reader trusts it).
    """
    images = "images" in path.name if images is None else images
    expected_magic, ndim = (0x803, 3) if images else (0x801, 1)
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4 + 4 * ndim)
    if size == 0:
        problem = "the file is empty"
    elif len(header) < 4:
        problem = "the file is too short to hold an IDX header"
    elif (magic := struct.unpack(">I", header[:4])[0]) != expected_magic:
        problem = f"wrong magic number 0x{magic:08x} (expected 0x{expected_magic:08x})"
    elif len(header) < 4 + 4 * ndim:
        problem = "the file is too short to hold an IDX header"
    else:
        dims = struct.unpack(f">{ndim}I", header[4:])
        promised = 4 + 4 * ndim + math.prod(dims)
        if images and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            problem = f"images are {dims[1]}x{dims[2]}, expected 28x28"
        elif dims[0] == 0 or dims[0] > MAX_IDX_ITEMS:
            problem = f"the header claims {dims[0]:,} items"
        elif size != promised:
            problem = (
                f"it is {size:,} bytes but its header promises {promised:,} (truncated or corrupt)"
            )
        else:
            return dims
    raise unusable(path, f"unusable: {problem}")


def accepted_files(name: str, dataset: IdxDataset = MNIST) -> list[dict]:
    """What the file `name` may be: the dataset's file, or a stand-in the tests declared."""
    accepted = [entry for entry in dataset.files.values() if entry["file"] == name]
    declared = os.environ.get(TEST_FILES_VARIABLE)
    if declared:
        try:
            stand_ins = json.loads(declared)
            if name in stand_ins:  # (another dataset's files have names of their own)
                accepted.append(dict(stand_ins[name]))
        except (ValueError, TypeError, AttributeError):
            raise MNISTDataError(
                f"{TEST_FILES_VARIABLE} must be a JSON object naming all four files with their "
                "md5 and items; unset it to use the official MNIST."
            ) from None
    return accepted


_verified: set[tuple] = set()  # files that passed, by path, size and time


def verify_file(path: Path, dataset: IdxDataset = MNIST) -> None:
    """Check one uncompressed file: a whole IDX file, its number of items, its MD5."""
    stat = path.stat()
    stamp = (str(path), stat.st_size, stat.st_mtime_ns, os.environ.get(TEST_FILES_VARIABLE))
    stamp += (dataset.name,)
    if stamp in _verified:  # once per process: the datamodule checks before and after download
        return
    accepted = accepted_files(path.name, dataset)
    role = next(r for r in ROLES if dataset.file(r) == path.name)
    items = read_idx_header(path, images=role.endswith("images"))[0]
    counted = [entry for entry in accepted if entry["items"] == items]
    if not counted:
        official = accepted[0]["items"]
        swapped = {items, official} == {60_000, 10_000}
        closest = min((entry["items"] for entry in accepted), key=lambda n: abs(n - items))
        expected = official if swapped else closest
        raise MNISTDataError(
            f"{dataset.folder} file {path} holds {items:,} items where the expected file holds "
            f"{expected:,}{' (train and test files swapped?)' if swapped else ''}. Replace it with "
            "a good copy of the official file."
        )
    md5 = calculate_md5(path)
    if all(md5 != entry["md5"] for entry in counted):
        expected = counted[0]["md5"]
        raise unusable(path, f"not the expected file (MD5 {md5}, expected {expected})", dataset)
    _verified.add(stamp)
