"""Exact resume: what a run killed and resumed needs to end with the figures of the run never
stopped, to the last digit (README, "Survive faults"). The train command adds these to every
Trainer (training/run.py), whatever the config says:

- RunCheckpointIO: how Lightning writes, reads and removes a run's checkpoints;
- LastCheckpoint and GracefulInterrupt: the checkpoints a run resumes from, taken where the
  resume is exact (`resumes_exactly_after`);
- and, in training/callbacks.py, ExactResumeMetrics, OneCycleFits, LogsWithCheckpoints and
  RestoreWatch: the training metrics' sums, the schedule's length, the loggers' rows and a
  failed restore, around a checkpoint.

The run's training order and random draws are the DataModule's (data/order.py); the logs a
resumed run writes again, training/run_folder.py.
"""

from __future__ import annotations

import csv
import io
import logging
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from mnist_lightning.atomic import write_atomically
from mnist_lightning.config import group_configs
from mnist_lightning.doors.checkpoints import read_checkpoint
from mnist_lightning.folders import CHECKPOINTS, DamagedFile, read_own

log = logging.getLogger(__name__)

# ModelCheckpoint's state: the paths it remembers, re-anchored to the run folder on resume.
REMEMBERED_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


@dataclass
class Resume:
    """A run continued from `checkpoint` (its last.ckpt, or ckpt_path=) in its `folder`: the
    global step it continues from, and the CSV log's rows before it, which the loggers write
    again (TensorBoard hides what the killed attempt wrote after it: `purge_step`)."""

    folder: Path
    checkpoint: Path
    step: int = 0
    earlier_rows: list[dict[str, Any]] = field(default_factory=list)
    # The results of a run that already finished in this folder, or None (also when they are
    # not whole: the run goes on from its last checkpoint and writes them again).
    finished: dict[str, Any] | None = None

    @classmethod
    def of(cls, folder: Path, checkpoint: Path, cfg: DictConfig) -> Resume:
        """The resume of `checkpoint`, with the config's TensorBoard loggers set to purge what
        was written after its step."""
        step = read_checkpoint(checkpoint).get("global_step", 0)
        for node in group_configs(cfg.get("logger"), TensorBoardLogger):
            node["purge_step"] = step
        csv_log = folder / "metrics.csv"
        if not csv_log.is_file():
            return cls(folder, checkpoint, step)
        try:
            logged = read_own(csv_log, whole_rows)
        except DamagedFile as error:
            raise DamagedFile(f"{error}; move it away to resume without its earlier rows") from None
        rows = []
        for row in logged:
            if row.get("step", "").isdigit() and int(row["step"]) < step:
                values = {k: _number(v) for k, v in row.items() if v}
                rows.append({k: v for k, v in values.items() if v is not None})
        return cls(folder, checkpoint, step, rows)

    def log_again(self, trainer: pl.Trainer) -> None:
        """Before the fit: the CSV rows before the resume point, written again through the CSV
        logger."""
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                continue
            with warnings.catch_warnings():  # "Previous log files ... will be deleted": kept here
                warnings.simplefilter("ignore")
                logger.experiment  # noqa: B018 - starts the new file, as Lightning would
            for row in self.earlier_rows:
                values = {k: v for k, v in row.items() if k not in ("step",)}
                logger.log_metrics(values, step=row["step"])
            logger.save()


def whole_rows(text: str) -> list[dict[str, str]]:
    """A CSV log's whole rows: a last row cut short by a kill (no line end), or any row of the
    wrong length, is left out."""
    if not text.endswith("\n"):
        text = text.rpartition("\n")[0]
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    return [dict(zip(header, row, strict=True)) for row in reader if len(row) == len(header)]


def _number(text: str) -> int | float | None:
    """A CSV cell as the number it was logged as; None for one that is not a number."""
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return None


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer for a run folder's `checkpoints/`.

    - Writes are whole or nothing: the checkpoint is serialised in memory, written beside its
      final name and renamed; a full disk ends in one line naming the folder.
    - Reads are `read_checkpoint`, and the paths ModelCheckpoint remembers are re-anchored to
      this run's folder as it is now (a moved run keeps managing its files); a remembered path
      that is not a checkpoint of a `checkpoints/` folder is dropped with one warning, so that no
      checkpoint can make Lightning delete or write outside the run.
    - Lightning removes only checkpoint files of this run's folder and its `checkpoints/`.
    """

    def __init__(self, checkpoints_dir: str | Path | None = None) -> None:
        super().__init__()
        self.checkpoints_dir = Path(checkpoints_dir).resolve() if checkpoints_dir else None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("RunCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory: a full disk is an OSError of the write below
        write_atomically(path, lambda temporary: temporary.write_bytes(buffer.getbuffer()))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        path = Path(path)
        checkpoint = read_checkpoint(path)
        if self.checkpoints_dir is not None:
            self.keep_inside(checkpoint, path)
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        path = Path(path)
        # checkpoints/, or the run folder itself: the learning-rate finder's temporary checkpoint
        # (Lightning writes it to default_root_dir, restores it and removes it).
        folders = (
            (self.checkpoints_dir, self.checkpoints_dir.parent) if self.checkpoints_dir else ()
        )
        inside = not folders or (
            path.parent.resolve() in folders and path.suffix == ".ckpt" and path.is_file()
        )
        if not inside:
            log.warning("not removing %s: it is not a checkpoint file of this run", path)
            return
        path.unlink(missing_ok=True)

    def _inside(self, remembered: Any) -> str | None:
        """A remembered checkpoint path as the same file of this run's checkpoints/ folder."""
        if remembered in ("", None):
            return ""
        if not isinstance(remembered, str):
            return None
        parts = PurePath(remembered)
        if ".." in parts.parts or parts.parent.name != CHECKPOINTS or parts.suffix != ".ckpt":
            return None
        return str(self.checkpoints_dir / parts.name)

    def keep_inside(self, checkpoint: dict[str, Any], path: Path) -> None:
        dropped = []

        def inside(remembered: Any) -> str:
            kept = self._inside(remembered)
            if kept is None:
                dropped.append(str(remembered))
            return kept or ""

        for state in (checkpoint.get("callbacks") or {}).values():
            if not isinstance(state, dict) or "best_model_path" not in state:
                continue  # only ModelCheckpoint remembers paths
            if "dirpath" in state:
                state["dirpath"] = str(self.checkpoints_dir)
            for key in REMEMBERED_PATHS:
                if key in state:
                    state[key] = inside(state[key])
            best = state.get("best_k_models")
            if isinstance(best, dict):
                best = {inside(remembered): score for remembered, score in best.items()}
                state["best_k_models"] = {k: score for k, score in best.items() if k}
        if dropped:
            log.warning(
                "%s remembers paths outside this run's %s/ folder; ignoring them: %s",
                path,
                CHECKPOINTS,
                ", ".join(sorted(set(dropped)))[:300],
            )


def resumes_exactly_after(trainer, batch_idx: int) -> bool:
    """Whether a checkpoint saved at the end of training batch `batch_idx` resumes exactly: the
    optimizer has just stepped (a checkpoint does not hold gradients accumulated half-way); the
    epoch has batches left (Lightning resumes from an epoch's last batch as if the epoch had
    ended, without its validation and epoch-end callbacks); and the loggers do not write this
    step after the hook (a run killed right after the checkpoint would never write that row;
    with `log_every_n_steps=1` every step is such a step, and that is accepted)."""
    stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
    every = trainer.log_every_n_steps
    logged_after = every > 1 and trainer.global_step % every == 0
    return stepped and batch_idx + 1 < trainer.num_training_batches and not logged_after


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for `checkpoints/last.ckpt`, whose `every_n_train_steps` skips
    a batch end from which a resumed run would not continue exactly (`resumes_exactly_after`):
    the run resumes from the checkpoint before it instead."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if resumes_exactly_after(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class GracefulInterrupt(Checkpoint):
    """Ctrl-C while training: finish the step under way, save `last.ckpt` at the end of that
    training batch, and stop; a second Ctrl-C stops at once. A Checkpoint callback, so that
    Lightning runs it after the others at each batch end (weight averaging has updated then).

    Lightning resumes mid-epoch from checkpoints saved where its own callbacks save them (the
    end of a training batch); one saved at an arbitrary moment of an interrupted step resumes
    with its step count off by one. It saves at the first batch end the run resumes from
    exactly (`resumes_exactly_after`).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.requested = False
        self.previous_handler = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = False
        try:
            self.previous_handler = signal.signal(signal.SIGINT, self._request)
        except ValueError:  # not the main thread: Ctrl-C keeps its default meaning
            self.previous_handler = None

    def _request(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.requested or not resumes_exactly_after(trainer, batch_idx):
            return  # (asked: then at a later batch end, one the run resumes from exactly)
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning(
                "interrupted in epoch %d at step %d; saved %s",
                trainer.current_epoch + 1,
                trainer.global_step,
                path,
            )
        raise KeyboardInterrupt

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            log.warning(
                "resume with: python -m mnist_lightning.train resume=%s", trainer.default_root_dir
            )

    def _restore(self) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
            self.previous_handler = None
