"""MNISTDataModule: MNIST in memory, a seeded train/val split, batches of one gather each.

Data flows one way: IDX files (mnist_files.py) -> uint8 tensors in memory -> one gather per
batch -> device -> scale, augment (training only) and normalise on the device
(`on_after_batch_transfer`) -> model, with no per-image PIL work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mnist_lightning.data import DATA_SOURCE, already_batched, to_model_input
from mnist_lightning.data.augment import BatchAugment
from mnist_lightning.data.datasets import IdxDataset
from mnist_lightning.data.mnist_files import default_data_dir, ensure_raw_files, load_mnist
from mnist_lightning.data.order import ResumableOrder
from mnist_lightning.errors import MNISTDataError


class InMemoryMNIST(Dataset):
    """uint8 images and int64 labels held as tensors; a whole batch is one indexing operation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader hands over a batch's indices at once: one gather instead of 64 items and a
        # collate. index_select is a plain gather, much faster than advanced indexing.
        index = torch.as_tensor(indices, device=self.images.device)
        return self.images.index_select(0, index), self.labels.index_select(0, index)


class MNISTDataModule(ResumableOrder, pl.LightningDataModule):
    """MNIST (or `dataset`, one of its format: data/datasets.py) with a seeded train/val split of
    the training images and the official test set. `augment`: BatchAugment's settings, or None.

    A checkpoint keeps the dataset's name, classes and normalisation, never where its files come
    from (`data_dir`, else $MNIST_DATA_DIR, else data/; `download`, `mirrors`). The training
    order resumes exactly (data/order.py)."""

    def __init__(
        self,
        data_dir: str | None = None,
        val_size: int = 5_000,  # of the 60,000 training images
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        shuffle: bool = True,
        normalize: bool = True,
        split_seed: int = 0,
        augment: Mapping[str, Any] | None = None,
        dataset: Mapping[str, Any] | None = None,
        download: bool = True,
        mirrors: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[*DATA_SOURCE, "dataset"])
        self.dataset = IdxDataset.of(dataset)
        self.hparams.dataset = self.dataset.public()
        self.data_dir = Path(data_dir or default_data_dir()).expanduser()
        self.download, self.mirrors = download, mirrors
        self.mnist: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the files as read
        self.splits: dict[str, InMemoryMNIST] = {}
        self.test_split = "test"  # what trainer.test() runs on; evaluate may pick "val"
        self.augment = BatchAugment(**augment) if augment else None

    def prepare_data(self) -> None:
        # Once per node: find, decompress or download, and check the files.
        ensure_raw_files(self.data_dir, self.download, self.mirrors, self.dataset)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.mnist = load_mnist(self.data_dir, download=False, dataset=self.dataset)
            self.splits = self._split()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None and device.type == "cuda":
            # All of MNIST is ~55 MB as uint8: keep it on the GPU, no copy per batch.
            for split in self.splits.values():
                split.images, split.labels = split.images.to(device), split.labels.to(device)

    def _split(self) -> dict[str, InMemoryMNIST]:
        images, labels = self.mnist["train"]
        val_size = self.hparams.val_size
        if not 0 < val_size < len(labels):
            raise MNISTDataError(
                f"data.val_size={val_size} must be between 1 and {len(labels) - 1:,} "
                f"(the training set has {len(labels):,} images)."
            )
        seeded = torch.Generator().manual_seed(self.hparams.split_seed)
        val_index, train_index = torch.randperm(len(labels), generator=seeded).split(
            [val_size, len(labels) - val_size]
        )
        return {
            "train": InMemoryMNIST(images[train_index], labels[train_index]),
            "val": InMemoryMNIST(images[val_index], labels[val_index]),
            "test": InMemoryMNIST(*self.mnist["test"]),
        }

    def train_dataloader(self) -> DataLoader:
        hparams = self.hparams
        return self.resumable_loader(self.splits["train"], hparams.batch_size, hparams.shuffle)

    # No optimizer step in evaluation: its batch size changes only the speed (per-image means).
    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str) -> DataLoader:
        # A generator of its own: a loader draws its base seed when iterated, and from the run's
        # generator that would shift the augmentation's draws (a resumed run's included).
        return DataLoader(
            self.splits[split],
            batch_size=self.hparams.eval_batch_size,
            collate_fn=already_batched,
            generator=torch.Generator(),
        )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # A batch is always (images, labels): two tensors moved directly, without Lightning's
        # generic walk through nested collections (a visible share of this small step).
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        augment = self.augment if training else None
        dataset = self.dataset
        x = to_model_input(images, self.hparams.normalize, augment, dataset.mean, dataset.std)
        if self.trainer is not None:
            # Lightning casts float inputs for its precision (64-true, bf16-true, ...) before the
            # transfer, when these are still uint8: cast the images the model will see here.
            x = self.trainer.precision_plugin.convert_input(x)
        return x, labels
