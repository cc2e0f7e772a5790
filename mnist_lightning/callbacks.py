"""Callbacks of our own; everything else comes from Lightning (see conf/callbacks/)."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class ConsoleReport(pl.Callback):
    """Plain log lines a person or a CI log can read: the lesson's training loss every N
    batches, and one line per epoch with the epoch's metrics and time."""

    def __init__(self, print_every_n_batches: int = 400) -> None:
        self.every = print_every_n_batches
        self.epoch_start = 0.0
        self.epoch_seconds: list[float] = []  # training + validation, per epoch
        self.first_step_at: float | None = None  # wall clock, for start-up measurements

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every and (batch_idx + 1) % self.every == 0 and trainer.is_global_zero:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            # .item() syncs with the device; once per N batches costs nothing measurable.
            log.info(
                "loss: %.6f  [batch %4d/%d]",
                loss.item(),
                batch_idx + 1,
                trainer.num_training_batches,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the epoch's validation, so one line holds both.
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(
            f"{name} {float(metrics[name]):.4f}"
            for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")
            if name in metrics
        )
        seconds = time.perf_counter() - self.epoch_start
        self.epoch_seconds.append(round(seconds, 3))
        log.info(
            "epoch %d/%d  %s  (%.1f s)",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            shown,
            seconds,
        )
