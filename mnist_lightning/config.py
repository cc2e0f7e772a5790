"""Config helpers for `conf/`: the OmegaConf resolvers the YAML files use, and the checks a
composed training config must pass before any work starts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_lightning.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "conf")
MNIST_TRAIN_IMAGES = 60_000


class ConfigError(UserError):
    """One or more config values are out of range; one line each."""


def _progress_refresh_rate(rate: int = 1) -> int:
    # A progress bar redrawn into a log file or CI output floods it; show one only on a terminal.
    return rate if sys.stdout.isatty() else 0


def _run_dir(resume, ckpt_path, new_dir: str) -> str:
    """A resumed run continues in its own folder; anything else gets a new one."""
    if resume:
        return str(Path(str(resume)).expanduser().resolve())
    if ckpt_path:
        checkpoint = Path(str(ckpt_path)).expanduser().resolve()
        return str(
            checkpoint.parent.parent
            if checkpoint.parent.name == "checkpoints"
            else checkpoint.parent
        )
    return new_dir


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("progress_refresh_rate", _progress_refresh_rate, replace=True)
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_training_config(cfg: DictConfig) -> None:
    """Refuse values that cannot work, before loading data or building anything."""
    from mnist_lightning.network import ACTIVATIONS

    problems = []
    for key, what in (
        ("batch_size", "(the lesson used 64)"),
        ("batches_per_fetch", "(optimizer batches per loader item; 1 = one batch per item)"),
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


register_resolvers()
