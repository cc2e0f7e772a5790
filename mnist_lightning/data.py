"""MNIST as a LightningDataModule: find or download the files, check them, split, batch in memory.

Data flows one way: IDX files -> uint8 tensors in memory -> one gather per loader item ->
device -> scale/normalise (and augment) on the device (`on_after_batch_transfer`) -> model. There
is no per-sample PIL work: torchvision's `MNIST(...).data` and `.targets` are already tensors.

A training loader item holds `batches_per_fetch` optimizer batches of `batch_size` images, split
on the device into a list of batches that `MNISTClassifier.training_step` steps through one by
one. The batches, their order and so the training are exactly those of a loader of
`batch_size`; Lightning's per-item machinery (fetch, transfer, callback hooks) just runs once per
32 steps (the default) instead of every step, which on a CPU costs as much as the small network's step itself.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import shutil
import struct
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mnist_lightning.errors import UserError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGE_SIZE = 28
NUM_CLASSES = 10

# name -> (IDX magic number, number of dimensions); images are N x 28 x 28 uint8, labels N uint8.
RAW_FILES = {
    "train-images-idx3-ubyte": (0x00000803, 3),
    "train-labels-idx1-ubyte": (0x00000801, 1),
    "t10k-images-idx3-ubyte": (0x00000803, 3),
    "t10k-labels-idx1-ubyte": (0x00000801, 1),
}
# The lesson's official images are 60,000 + 10,000; a header claiming far more is lying.
MAX_IDX_ITEMS = 10_000_000


class MNISTDataError(UserError):
    """A user-fixable problem with the MNIST files; the message says what to do."""


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
    """Load MNIST as {"train": (images, labels), "test": (...)}; images uint8 [N, 1, 28, 28].

    Read once per process and folder: the datamodule, the sample grid and the tools share it.
    """
    root = ensure_raw_files(data_dir, download)
    stats = [(root / "MNIST" / "raw" / name).stat() for name in RAW_FILES]
    stamp = tuple((s.st_mtime_ns, s.st_size) for s in stats)  # a replaced file is read anew
    return _read_mnist(root, stamp)


@functools.lru_cache(maxsize=2)
def _read_mnist(root: Path, stamp: tuple) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from torchvision.datasets import MNIST

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


class InMemoryMNIST(Dataset):
    """uint8 images and int64 labels held as tensors; a whole batch is one indexing operation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader calls this with a batch sampler's whole list of indices.
        index = torch.as_tensor(indices, device=self.images.device)  # on a GPU, it stays there
        # index_select: one plain gather, ~15x faster than advanced indexing (images[index]).
        return self.images.index_select(0, index), self.labels.index_select(0, index)


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class MNISTDataModule(pl.LightningDataModule):
    """MNIST with a seeded train/val split of the 60,000 training images and the official test set."""

    def __init__(
        self,
        data_dir: str | None = None,
        val_size: int = 5_000,
        batch_size: int = 64,
        batches_per_fetch: int = 32,
        eval_batch_size: int = 1000,
        shuffle: bool = True,
        normalize: bool = True,
        split_seed: int = 0,
        download: bool = True,
        augment: dict | None = None,
    ) -> None:
        super().__init__()
        # Absolute, so a checkpoint's data settings mean the same folder from any directory.
        data_dir = str(Path(data_dir or default_data_dir()).expanduser().resolve())
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.splits: dict[str, InMemoryMNIST] = {}
        self.test_split = "test"  # what trainer.test() runs on; evaluate may pick "val"
        # A plain config (kept in checkpoints as data), built here: conf/augment/.
        self.augment = _build(augment) if augment else None

    def prepare_data(self) -> None:
        # Runs once per node: find, decompress or download and check the files.
        ensure_raw_files(self.data_dir, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self._split()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None and device.type == "cuda":
            # The whole of MNIST is ~55 MB as uint8: keep it on the GPU, no copy per batch.
            for split in self.splits.values():
                split.images, split.labels = split.images.to(device), split.labels.to(device)

    def _split(self) -> dict[str, InMemoryMNIST]:
        data = load_mnist(self.data_dir, download=False)
        images, labels = data["train"]
        val_size = self.hparams.val_size
        if not 0 < val_size < len(labels):
            raise MNISTDataError(
                f"data.val_size={val_size} must be between 1 and {len(labels) - 1:,} "
                f"(the training set has {len(labels):,} images)."
            )
        order = torch.randperm(
            len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed)
        )
        val_index, train_index = order[:val_size], order[val_size:]
        return {
            "train": InMemoryMNIST(images[train_index], labels[train_index]),
            "val": InMemoryMNIST(images[val_index], labels[val_index]),
            "test": InMemoryMNIST(*data["test"]),
        }

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        # With a batch size, DataLoader hands each item's indices to __getitems__ at once (one
        # gather), and Lightning can swap in a DistributedSampler under DDP.
        return DataLoader(
            self.splits[split], batch_size=batch_size, shuffle=shuffle, collate_fn=_already_batched
        )

    def train_dataloader(self) -> DataLoader:
        fetch = self.hparams.batch_size * self.hparams.batches_per_fetch
        return self._loader("train", fetch, shuffle=self.hparams.shuffle)

    # Evaluation takes no optimizer step, so its batch size changes only the speed: metrics are
    # per-image weighted.
    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        x = to_model_input(images, self.hparams.normalize, self.augment if training else None)
        if not training:
            return x, labels
        # One conversion for the whole item, then views: a list of optimizer batches.
        size = self.hparams.batch_size
        return list(zip(x.split(size), labels.split(size), strict=True))

    def steps_per_epoch(self) -> int:
        """Optimizer steps per training epoch on this process (Lightning counts loader items)."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        samples = math.ceil(len(self.splits["train"]) / world_size)  # DistributedSampler's share
        steps = math.ceil(samples / self.hparams.batch_size)
        items = self.trainer.num_training_batches if self.trainer is not None else math.inf
        if items < math.ceil(steps / self.hparams.batches_per_fetch):  # limit_train_batches
            return int(items) * self.hparams.batches_per_fetch
        return steps


def _build(config: dict):
    from hydra.utils import instantiate

    return instantiate(config)


def to_model_input(images: torch.Tensor, normalize: bool = True, augment=None) -> torch.Tensor:
    """uint8 [N,1,28,28] -> float32 in [0,1] (the lesson's ToTensor) -> augmented (training
    only) -> MNIST-normalised."""
    x = images.float().div_(255)
    if augment is not None:
        x = augment(x)
    if normalize:
        x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
    return x
