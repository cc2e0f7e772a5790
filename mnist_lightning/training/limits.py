"""`trainer.limit_*_batches` as a fraction, against the batches each process gets: checked once
the Trainer knows its processes and the files their sizes, before anything is written.

Lightning counts a fraction of the batches of each process's own loader, and refuses one that
comes to no batch ("0.1 * 3 < 1") only once the fit has started: under DDP each process gets
1/N of the images (Lightning's DistributedSampler pads them to equal shares), so a tenth of
5,000 validation images in batches of 1,000 on two processes is no batch at all.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl

from mnist_lightning.data.idx_files import read_idx_header
from mnist_lightning.data.mnist_files import ensure_raw_files
from mnist_lightning.errors import ConfigError

LOOPS = {  # the loop, its words, the batch size that makes its batches
    "train": ("training", "batch_size"),
    "val": ("validation", "eval_batch_size"),
    "test": ("test", "eval_batch_size"),
}


def images_per_loop(datamodule) -> dict[str, int]:
    """How many images each loop runs over, from the files' headers (nothing is loaded)."""
    dataset = datamodule.dataset
    raw = ensure_raw_files(datamodule.data_dir, False, None, dataset) / dataset.folder / "raw"
    train, test = (read_idx_header(raw / dataset.file(f"{s}_labels"))[0] for s in ("train", "test"))
    val = datamodule.hparams.val_size
    return {"train": train - val, "val": val, "test": test}


def fewest_batches(fraction: float) -> int:
    """The fewest batches of which Lightning's `int(batches * fraction)` keeps one."""
    return next(k for k in range(1, 10**6) if int(k * fraction) >= 1)


def check_limits(trainer: pl.Trainer, datamodule) -> None:
    """One line for a fractional limit that leaves a loop with no batch, saying which batch size
    to lower (or to give a number of batches instead)."""
    limits = {loop: getattr(trainer, f"limit_{loop}_batches") for loop in LOOPS}
    fractions = {k: v for k, v in limits.items() if isinstance(v, float) and 0 < v < 1}
    if not fractions or trainer.fast_dev_run or trainer.overfit_batches:
        return
    images = images_per_loop(datamodule)
    for loop, fraction in fractions.items():
        words, size_key = LOOPS[loop]
        share = math.ceil(images[loop] / trainer.world_size)
        batch_size = datamodule.hparams[size_key]
        batches = math.ceil(share / batch_size)
        if int(batches * fraction) >= 1:
            continue
        processes = (
            f" each of the {trainer.world_size} processes gets" if trainer.world_size > 1 else ""
        )
        needed = fewest_batches(fraction)
        lower = (
            f"lower data.{size_key} to {share // needed:,} or less, or "
            if share // needed >= 1
            else ""
        )
        raise ConfigError(
            f"trainer.limit_{loop}_batches={fraction:g} of the {batches:,} {words} batches"
            f"{processes} ({share:,} images, data.{size_key}={batch_size:,}) is no batch: "
            f"{lower}give a number of batches (trainer.limit_{loop}_batches=1)"
        )
