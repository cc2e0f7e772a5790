"""The four IDX files of MNIST (or of another dataset of its format, datasets.py): find them,
decompress them, download them, check them, read them.

torchvision does the work (its mirrors, `download_url`, `calculate_md5`, its IDX readers).
What it lacks is added here: a timeout for a silent mirror, a gunzip bounded by the file's size,
a check of each IDX header before anything is read, the MD5 of the *uncompressed* file (so a
local or re-compressed copy is checked like a download), nothing half-written left behind, and
one line for any failure.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import download_url

from mnist_lightning import project_root
from mnist_lightning.data import IMAGE_SIZE, NUM_CLASSES
from mnist_lightning.data.datasets import MNIST, ROLES, IdxDataset
from mnist_lightning.data.idx_files import (  # noqa: F401 - RAW_FILES & co. are named here too
    RAW_FILES,
    TEST_FILES_VARIABLE,
    accepted_files,
    read_idx_header,
    unusable,
    verify_file,
)
from mnist_lightning.errors import MNISTDataError, first_line

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60


def default_data_dir() -> Path:
    """`$MNIST_DATA_DIR` when set, else `data/` under the project root (never Hydra's run dir)."""
    env = os.environ.get("MNIST_DATA_DIR")
    return Path(env) if env else project_root() / "data"


def _fix_hint(raw_dir: Path, dataset: IdxDataset = MNIST) -> str:
    names = ", ".join(f"{dataset.file(role)}(.gz)" for role in ROLES)
    return (
        f"Put the four {dataset.folder} files ({names}) into {raw_dir}/, or point the project "
        f"at a folder that holds {dataset.folder}/raw/ with `data.data_dir=<folder>` or the "
        "MNIST_DATA_DIR environment variable."
    )


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _decompress(gz_path: Path, target: Path, dataset: IdxDataset = MNIST) -> None:
    """Gunzip into a scratch folder beside `target`, then move it into place (a crash never
    leaves a half-written IDX file behind), reading no more than the largest file `target` may
    be: torchvision's extract_archive has no bound, and a .gz of a few MB can inflate to GBs."""
    header, per_item = (16, IMAGE_SIZE * IMAGE_SIZE) if "images" in target.name else (8, 1)
    accepted = accepted_files(target.name, dataset)
    limit = max(header + entry["items"] * per_item for entry in accepted)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gunzip-") as scratch:
        inflated = Path(scratch) / target.name
        try:
            with gzip.open(gz_path) as source, inflated.open("wb") as sink:
                while chunk := source.read(1 << 20):
                    if sink.tell() + len(chunk) > limit:
                        raise unusable(gz_path, f"a .gz that inflates past {limit:,} bytes")
                    sink.write(chunk)
        except (OSError, EOFError) as err:
            raise unusable(gz_path, f"not a readable gzip file ({err})") from None
        os.replace(inflated, target)


def locate_raw_files(data_dir: Path, dataset: IdxDataset = MNIST) -> Path | None:
    """Return a root holding <folder>/raw/ with all four uncompressed files, or None if missing.

    `.gz` files are decompressed next to themselves, or into a cache folder when `data_dir` is
    read-only, so a read-only folder of `.gz` files works without any network.
    """
    raw_dir = data_dir / dataset.folder / "raw"
    names = [dataset.file(role) for role in ROLES]
    found = {name: (raw_dir / name).is_file() for name in names}
    if all(found.values()):
        return data_dir
    if not all(found[name] or (raw_dir / f"{name}.gz").is_file() for name in names):
        return None
    root = data_dir
    if not _writable(raw_dir):
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist_lightning"
        log.info("%s is read-only; decompressing into %s", raw_dir, root / dataset.folder / "raw")
    out_dir = root / dataset.folder / "raw"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (out_dir / name).is_file():
            continue
        if found[name]:
            shutil.copyfile(raw_dir / name, out_dir / name)
        else:
            _decompress(raw_dir / f"{name}.gz", out_dir / name, dataset)
    return root


def _download_one(name: str, raw_dir: Path, mirrors: Sequence[str], dataset: IdxDataset) -> str:
    """Fetch `<name>.gz` from the first mirror that serves the expected file; return the mirror.

    Each try lands in a temporary folder beside the final file and moves into place only once
    decompressed and verified, so a failed or interrupted download leaves nothing behind.
    """
    problems = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}.gz"
        with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".download-") as scratch:
            scratch = Path(scratch)
            previous_timeout = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a silent mirror must not hang the run
            try:
                download_url(url, scratch, f"{name}.gz")
                _decompress(scratch / f"{name}.gz", scratch / name, dataset)
                verify_file(scratch / name, dataset)
            except (OSError, RuntimeError, ValueError, EOFError, MNISTDataError) as error:
                # Short: the scratch path and the advice meant for local files are left out.
                text = first_line(error).replace(f"{scratch}{os.sep}", "").split(". ")[0][:200]
                problems.append(f"{url}: {text or type(error).__name__}")
                continue
            finally:
                socket.setdefaulttimeout(previous_timeout)
            os.replace(scratch / name, raw_dir / name)
            return mirror
    raise MNISTDataError(
        f"Could not download {name} from any mirror ({'; '.join(problems)}). "
        + _fix_hint(raw_dir, dataset)
    )


def _download(data_dir: Path, mirrors: Sequence[str], dataset: IdxDataset) -> None:
    raw_dir = data_dir / dataset.folder / "raw"
    hint = _fix_hint(raw_dir, dataset)
    if not _writable(raw_dir):
        raise MNISTDataError(
            f"{dataset.folder} is not in {raw_dir} and that folder cannot be written, so it "
            f"cannot be downloaded there. {hint}"
        )
    if not mirrors:
        raise MNISTDataError(f"{dataset.folder} is missing and data.mirrors is empty. {hint}")
    for name in (dataset.file(role) for role in ROLES):
        if (raw_dir / name).is_file() or (raw_dir / f"{name}.gz").is_file():
            continue
        log.info("downloading %s into %s", name, raw_dir)
        mirror = _download_one(name, raw_dir, mirrors, dataset)
        log.info("downloaded %s from %s", name, mirror)


def _data_folder(data_dir: str | Path) -> Path:
    try:
        folder = Path(data_dir).expanduser().resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop, an unreadable parent
        raise MNISTDataError(
            f"data.data_dir={data_dir} cannot be opened ({error}); point it at a folder that "
            "holds MNIST/raw/."
        ) from None
    if folder.exists() and not folder.is_dir():
        raise MNISTDataError(
            f"data.data_dir={folder} is a file; it must be a folder holding MNIST/raw/."
        )
    return folder


def ensure_raw_files(
    data_dir: str | Path,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    dataset: IdxDataset = MNIST,
) -> Path:
    """Find (decompress, or download from `mirrors`, default the dataset's, the working one
    first) and check the four files; return the root holding <folder>/raw/."""
    data_dir = _data_folder(data_dir)
    raw = Path(dataset.folder) / "raw"
    try:
        root = locate_raw_files(data_dir, dataset)
        if root is None and download:
            _download(data_dir, dataset.mirrors if mirrors is None else mirrors, dataset)
            root = locate_raw_files(data_dir, dataset)
        if root is None:
            hint = _fix_hint(data_dir / raw, dataset)
            raise MNISTDataError(f"{dataset.folder} is missing. {hint}")
        for role in ROLES:
            verify_file(root / raw / dataset.file(role), dataset)
    except PermissionError as error:
        raise MNISTDataError(
            f"cannot read {error.filename} (permission denied); fix its permissions or point "
            f"data.data_dir at a readable copy of {dataset.folder}."
        ) from None
    return root


def load_mnist(
    data_dir: str | Path,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    dataset: IdxDataset = MNIST,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The dataset as {"train": (images, labels), "test": (...)}: images uint8 [N, 1, 28, 28],
    labels int64 [N], read by torchvision's IDX readers after the files passed their checks."""
    raw = ensure_raw_files(data_dir, download, mirrors, dataset) / dataset.folder / "raw"
    splits = {}
    for split in ("train", "test"):
        images = read_image_file(str(raw / dataset.file(f"{split}_images")))
        labels_file = raw / dataset.file(f"{split}_labels")
        labels = read_label_file(str(labels_file))
        if labels.numel() and int(labels.max()) >= NUM_CLASSES:
            raise MNISTDataError(
                f"{dataset.folder} file {labels_file} holds label {int(labels.max())}; labels "
                "must be 0-9. Replace it with a good copy of the official file."
            )
        splits[split] = (images.unsqueeze(1).contiguous(), labels)
    return splits
