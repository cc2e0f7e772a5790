"""The four MNIST files' checks: what each may be (the official file, or a stand-in the tests
declare), its IDX header against its size before anything is read, and its MD5, of the
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
from mnist_lightning.errors import MNISTDataError

# The official files: the MD5 of each uncompressed file (torchvision knows only the .gz's) and the
# number of items it holds.
OFFICIAL_FILES = {
    "train-images-idx3-ubyte": {"md5": "6bbc9ace898e44ae57da46a324031adb", "items": 60_000},
    "train-labels-idx1-ubyte": {"md5": "a25bea736e30d166cdddb491f175f624", "items": 60_000},
    "t10k-images-idx3-ubyte": {"md5": "2646ac647ad5339dbf082846283269ea", "items": 10_000},
    "t10k-labels-idx1-ubyte": {"md5": "27ae3e4e09519cfbb04c329615203637", "items": 10_000},
}
RAW_FILES = tuple(OFFICIAL_FILES)
# The test suite's small stand-in files, accepted beside the official ones when this variable
# names them (a JSON object: file name -> {"md5", "items"}). Only the tests set it: nothing a
# config, a run folder or a checkpoint holds can add to the files accepted as MNIST.
TEST_FILES_VARIABLE = "MNIST_LIGHTNING_TEST_FILES"
MAX_IDX_ITEMS = 10_000_000  # the official files hold 60,000 + 10,000; a header claiming more lies


def unusable(path: Path, problem: str) -> MNISTDataError:
    return MNISTDataError(
        f"MNIST file {path} is {problem}. Delete it and run again to download a fresh copy, or "
        "replace it with a good copy of the official file."
    )


def read_idx_header(path: Path) -> tuple[int, ...]:
    """Check one of the four files' IDX header against the file's size; return its dimensions.

    Reads only the header, so a lying header can never make us allocate what it claims
    (torchvision's reader trusts it).
    """
    images = "images" in path.name
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


def accepted_files(name: str) -> list[dict]:
    """What the file `name` may be: the official file, or a stand-in the tests declared."""
    accepted = [OFFICIAL_FILES[name]]
    declared = os.environ.get(TEST_FILES_VARIABLE)
    if declared:
        try:
            accepted.append(dict(json.loads(declared)[name]))
        except (ValueError, KeyError, TypeError):
            raise MNISTDataError(
                f"{TEST_FILES_VARIABLE} must be a JSON object naming all four files with their "
                "md5 and items; unset it to use the official MNIST."
            ) from None
    return accepted


_verified: set[tuple] = set()  # files that passed, by path, size and time


def verify_file(path: Path) -> None:
    """Check one uncompressed file: a whole IDX file, its number of items, its MD5."""
    stat = path.stat()
    stamp = (str(path), stat.st_size, stat.st_mtime_ns, os.environ.get(TEST_FILES_VARIABLE))
    if stamp in _verified:  # once per process: the datamodule checks before and after download
        return
    accepted = accepted_files(path.name)
    items = read_idx_header(path)[0]
    counted = [entry for entry in accepted if entry["items"] == items]
    if not counted:
        official = accepted[0]["items"]
        swapped = {items, official} == {60_000, 10_000}
        closest = min((entry["items"] for entry in accepted), key=lambda n: abs(n - items))
        expected = official if swapped else closest
        raise MNISTDataError(
            f"MNIST file {path} holds {items:,} items where the expected file holds "
            f"{expected:,}{' (train and test files swapped?)' if swapped else ''}. Replace it with "
            "a good copy of the official file."
        )
    md5 = calculate_md5(path)
    if all(md5 != entry["md5"] for entry in counted):
        raise unusable(path, f"not the expected file (MD5 {md5}, expected {counted[0]['md5']})")
    _verified.add(stamp)
