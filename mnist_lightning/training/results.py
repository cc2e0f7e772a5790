"""A finished run's results: its final metrics, metrics.json, TensorBoard's HParams entry, the
trackers' files and the line the train command ends with."""

from __future__ import annotations

import json
import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.folders import CHECKPOINTS
from mnist_lightning.models.metrics import STAGES
from mnist_lightning.settings import TrainSettings
from mnist_lightning.training import figures
from mnist_lightning.training.callbacks import EpochReport, tensorboard_writer
from mnist_lightning.training.monitors import GradientMonitor
from mnist_lightning.training.run_folder import RunFolder
from mnist_lightning.training.tracking import finish_runs, log_run_files

log = logging.getLogger("mnist_lightning.train")


def stage_scalars(metrics: dict) -> dict[str, float]:
    """The metrics of the stages (train/, val/, test/), the ones metrics.json keeps."""
    prefixes = tuple(f"{stage}/" for stage in STAGES)
    return {name: float(v) for name, v in metrics.items() if name.startswith(prefixes)}


def final_metrics(trainer: pl.Trainer, fit_seconds: float) -> dict[str, Any]:
    """The fit's last epoch metrics, its per-epoch history and its size."""
    metrics: dict[str, Any] = stage_scalars(trainer.callback_metrics)
    report = next((c for c in trainer.callbacks if isinstance(c, EpochReport)), None)
    if report is not None:
        # The history is the record, also when a resumed fit had nothing left to do.
        for name, values in report.history.items():  # the last measured value of each
            measured = [v for v in values if v is not None]
            if measured:
                metrics[name] = measured[-1]
        metrics.pop("epoch_seconds", None)
        metrics.update(history=dict(report.history), training_started_at=report.training_started_at)
    monitor = next((c for c in trainer.callbacks if isinstance(c, GradientMonitor)), None)
    if monitor is not None and monitor.first_epoch:
        metrics["gradient_norms"] = dict(monitor.first_epoch)
    metrics.update(
        fit_seconds=round(fit_seconds, 2),
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        world_size=trainer.world_size,
    )
    return metrics


def tested(trainer: pl.Trainer, checkpoint_name: str) -> dict[str, Any]:
    """The test metrics, and which checkpoint they are of (a path inside the run folder)."""
    where = (
        f"{CHECKPOINTS}/{checkpoint_name}" if checkpoint_name.endswith(".ckpt") else checkpoint_name
    )
    return {**stage_scalars(trainer.callback_metrics), "test_checkpoint": where}


def write_results(
    settings: TrainSettings, trainer: pl.Trainer, metrics: dict[str, Any], folder: RunFolder
) -> None:
    """metrics.json, TensorBoard's HParams entry, the trackers' files and the summary line
    (by rank zero alone under DDP)."""
    if not trainer.is_global_zero:
        return
    log_hparams(trainer, settings, metrics)
    if settings.gradient_flow and metrics.get("gradient_norms"):
        title = f"activation {settings.model['activation']}"
        figure = figures.gradient_flow({title: metrics["gradient_norms"]})
        path = folder.path / "gradient_flow.png"
        figures.publish(figure, path, tensorboard_writer(trainer), "gradients/flow")
    write_text_atomically(folder.metrics_file, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    tested_file = folder.path / str(metrics.get("test_checkpoint", ""))
    log_run_files(trainer, folder.path, str(tested_file) if tested_file.is_file() else "")
    finish_runs(trainer)
    # No test figures where none were measured (test=false).
    shown = [f"{k} {metrics[k]:.4f}" for k in ("test/acc", "test/loss") if k in metrics]
    shown += [f"epochs {metrics['epochs']}", f"time {metrics['fit_seconds']:.1f} s"]
    log.info("%s  run dir %s", "  ".join(shown), folder.path)


def log_hparams(trainer: pl.Trainer, settings: TrainSettings, metrics: dict[str, Any]) -> None:
    """TensorBoard's HParams tab: the run's hyperparameters beside its final metrics."""
    params = settings.headline()
    # Own tags: the HParams tab shows each metric's last value, and test/acc is already a scalar.
    final = {
        f"hp/{k.replace('/', '_')}": metrics[k]
        for k in ("test/acc", "test/loss", "val/acc_best")
        if k in metrics
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, final)
            logger.experiment.flush()
