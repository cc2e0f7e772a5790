"""The checks a composed training config must pass before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from mnist_lightning.errors import ConfigError, UserError

MNIST_TRAIN_IMAGES = 60_000


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_training_config(cfg: DictConfig) -> None:
    """Refuse values that cannot work, before loading data or building anything."""
    from mnist_lightning.network import ACTIVATIONS

    problems = []
    for key, what in (
        ("batch_size", "(the lesson used 64)"),
        ("eval_batch_size", "(images per validation/test batch)"),
    ):
        value = cfg.data.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"data.{key}={value}: must be a whole number above 0 {what}")
    val_size = cfg.data.get("val_size")
    if not isinstance(val_size, int) or not 0 < val_size < MNIST_TRAIN_IMAGES:
        problems.append(
            f"data.val_size={val_size}: must be a whole number between 1 and {MNIST_TRAIN_IMAGES - 1:,} "
            "(images held out of the 60,000 for validation; default 5000)"
        )
    lr = cfg.optimizer.get("lr")
    if not _is_number(lr) or lr <= 0:
        problems.append(f"optimizer.lr={lr}: the learning rate must be a number above 0")
    activation = cfg.model.get("activation")
    if activation not in ACTIVATIONS:
        problems.append(
            f"model.activation={activation}: unknown; choose one of {', '.join(ACTIVATIONS)}"
        )
    scheduler = cfg.get("scheduler") or {}
    if scheduler and "_target_" not in scheduler:  # e.g. +scheduler.frequency=2 on `none`
        settings = " ".join(f"scheduler.{k}={v}" for k, v in scheduler.items())
        problems.append(
            f"{settings} is set without a scheduler: choose one as well, "
            "e.g. scheduler=step (step, cosine, onecycle or plateau)"
        )
    interval, frequency = scheduler.get("interval", "epoch"), scheduler.get("frequency", 1)
    if interval not in ("epoch", "step"):
        problems.append(
            f"scheduler.interval={interval}: use epoch (step the schedule after each epoch) or "
            "step (after each optimizer step)"
        )
    if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
        problems.append(
            f"scheduler.frequency={frequency}: must be a whole number, at least 1 (step the "
            "schedule every N epochs or optimizer steps)"
        )
    epochs = cfg.trainer.get("max_epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        problems.append(f"trainer.max_epochs={epochs}: must be a whole number, at least 1")
    data_dir = cfg.data.get("data_dir")
    if data_dir and Path(str(data_dir)).expanduser().is_file():
        problems.append(
            f"data.data_dir={data_dir}: is a file; it must be a folder holding MNIST/raw/"
        )
    threads = cfg.get("cpu_threads")
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        problems.append(
            f"cpu_threads={threads}: must be a whole number, at least 1, or null (torch's default)"
        )
    if problems:
        raise ConfigError("\n".join(problems))


def check_output_dir(path: str | Path) -> Path:
    """Make sure results can be written, before training starts rather than after."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write the run folder {path} ({error.strerror or error}). Free some space, fix its "
            "permissions, or choose another with hydra.run.dir=<folder>."
        ) from None
    if not os.access(path, os.W_OK):
        raise UserError(
            f"cannot write the run folder {path}; choose another with hydra.run.dir=<folder>"
        )
    return path
