"""`lr_find=true`: Lightning's learning-rate finder before the fit, its plot and its suggestion."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.tuner import Tuner

from mnist_lightning.errors import UserError
from mnist_lightning.training import figures
from mnist_lightning.training.callbacks import tensorboard_writer

log = logging.getLogger(__name__)


def find_learning_rate(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    run_dir: Path,
) -> float:
    """Run Lightning's range test (`Tuner.lr_find`), give the model's optimizer its suggestion,
    save the loss-against-rate plot as `lr_find.png` and to TensorBoard; return the rate."""
    finder = Tuner(trainer).lr_find(model, datamodule=datamodule, update_attr=False)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None:
        raise UserError(
            "the learning-rate finder found no rate to suggest (the loss never fell); set "
            "optimizer.lr yourself, or try another optimizer"
        )
    model.hparams.optimizer["lr"] = suggestion  # what configure_optimizers builds the fit with
    figure = finder.plot(suggest=True)
    figure.axes[0].set_title(f"learning-rate finder: suggested lr {suggestion:.3g}")
    figures.publish(figure, run_dir / "lr_find.png", tensorboard_writer(trainer), "lr_find/plot")
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics({"lr_find/suggestion": suggestion}, step=0)
    log.info(
        "learning-rate finder: suggested lr %.4g (plot: %s)", suggestion, run_dir / "lr_find.png"
    )
    return suggestion
