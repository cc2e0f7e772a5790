"""The run, stage by stage, from its settings (settings.py, checked first: check.py): build the
data, the model and the Trainer, fit, and test the best checkpoint on the official test set."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from mnist_lightning.config import group_targets
from mnist_lightning.doors.checkpoints import load_trained, read_checkpoint
from mnist_lightning.errors import (
    CheckpointError,
    ConfigError,
    TrainingDiverged,
    UserError,
    first_line,
)
from mnist_lightning.folders import CHECKPOINTS
from mnist_lightning.settings import TrainSettings
from mnist_lightning.training.callbacks import (
    ExactResumeMetrics,
    LogsWithCheckpoints,
    OneCycleFits,
    RestoreWatch,
)
from mnist_lightning.training.check import building
from mnist_lightning.training.limits import check_limits
from mnist_lightning.training.monitors import StepLossLogger
from mnist_lightning.training.resume import Resume, RunCheckpointIO
from mnist_lightning.training.tracking import (
    end_killed_attempts,
    keep_offline_runs_offline,
    log_config,
)

log = logging.getLogger(__name__)

# --- build ----------------------------------------------------------------------------------


def set_up_process(settings: TrainSettings) -> None:
    """Seed and CPU threads, before anything is built.

    Two trainings that each use every core slow each other down many times over, and this small
    network gains little from a second thread (cpu_threads: 1; benchmarks/README.md).
    """
    if settings.cpu_threads:
        torch.set_num_threads(settings.cpu_threads)
    pl.seed_everything(settings.seed, workers=True, verbose=False)


# The data's and the model's settings stay plain values, as checkpoints keep them.
PLAIN = {"_recursive_": False, "_convert_": "all"}


def build(settings: TrainSettings):
    """The datamodule, the model, and the Trainer with its loggers and callbacks, from the run's
    settings: each is the `_target_` of its part of the config, built by Hydra's instantiate
    (the data and the model with plain settings, which Lightning keeps in checkpoints)."""
    with building("data", settings.overrides):
        datamodule = instantiate(settings.data, **PLAIN, augment=settings.augment)
    with building("model", settings.overrides):
        model = instantiate(
            settings.model, **PLAIN, optimizer=settings.optimizer, scheduler=settings.scheduler
        )
    with building("logger", settings.overrides):
        keep_offline_runs_offline(settings.logger)
        loggers = [instantiate(node) for node in group_targets(settings.logger)]
    with building("callbacks", settings.overrides):
        callbacks = [instantiate(node) for node in group_targets(settings.callbacks)]
    if not loggers:  # (logger=none, logger=[], ~logger): Lightning refuses a monitor without one
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    with building("trainer", settings.overrides):
        trainer = instantiate(
            settings.trainer,
            logger=loggers or False,
            callbacks=[*callbacks, *run_callbacks()],
            plugins=[
                *instantiate(settings.trainer.get("plugins") or []),
                run_checkpoint_io(settings),
            ],
            _convert_="all",
        )
    datamodule.prepare_data()  # missing or damaged data: one line before anything is written
    check_limits(trainer, datamodule)  # (a fraction of the batches each process gets)
    return datamodule, model, trainer


def start_from_weights(model: pl.LightningModule, init_from: str) -> None:
    """A new run's network starts from a trained model's weights (`init_from=`, fine-tuning),
    read through the checkpoint door (doors/checkpoints.py) as a file from others."""
    model.net.load_state_dict(load_trained(init_from).model.net.state_dict())


def run_callbacks() -> list[pl.Callback]:
    """What the train command adds to every Trainer, whatever the config says: exact resume's
    pieces (training/resume.py) and the step loss."""
    resume = [ExactResumeMetrics(), OneCycleFits(), LogsWithCheckpoints(), RestoreWatch()]
    return [*resume, StepLossLogger()]


def run_checkpoint_io(settings: TrainSettings) -> RunCheckpointIO:
    """The plugin through which Lightning writes, reads and removes the run's checkpoints: always
    there, whatever the config says, so that no checkpoint read back can make it write or delete
    outside the run (training/resume.py)."""
    return RunCheckpointIO(Path(settings.output_dir) / CHECKPOINTS)


# --- fit and test ---------------------------------------------------------------------------


def fit(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule,
    settings: TrainSettings,
    resume: Resume | None,
) -> float:
    """trainer.fit, from the checkpoint it resumes from; the seconds it took. Each attempt is a
    tracker run of its own (MLflow, W&B), with the config; a resumed run writes its earlier CSV
    rows again and ends its killed attempts' tracker runs first. A diverged loss (the divergence
    stop, conf/callbacks/) ends in TrainingDiverged."""
    checkpoint = resume.checkpoint if resume is not None else None
    if resume is not None:
        resume.log_again(trainer)
    log_config(trainer, settings)
    if resume is not None:
        end_killed_attempts(trainer, resume.folder)
    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    except UserError:
        raise
    except MisconfigurationException as error:  # Lightning's word for a setting it refuses
        raise ConfigError(f"the Trainer refused the settings: {first_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - whatever a damaged checkpoint makes fail
        watch = next(c for c in trainer.callbacks if isinstance(c, RestoreWatch))
        if checkpoint is None or watch.restored:
            raise
        reason = " ".join(str(error).split())[:300]  # (torch's load_state_dict: many lines)
        raise CheckpointError(
            f"{checkpoint} cannot be restored ({type(error).__name__}: {reason}); resume from "
            "another checkpoint of the run, or start a new run."
        ) from None
    seconds = time.perf_counter() - started
    diverged = divergence(trainer)
    if diverged:
        raise TrainingDiverged(diverged)
    return seconds


def divergence(trainer: pl.Trainer) -> str | None:
    """Why an EarlyStopping callback stopped the fit on a NaN or exploding metric, or None."""
    diverged = (EarlyStoppingReason.NON_FINITE_METRIC, EarlyStoppingReason.DIVERGENCE_THRESHOLD)
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopping_reason in diverged:
            optimizer = trainer.optimizers[0]
            value = float(trainer.callback_metrics.get(callback.monitor, float("nan")))
            best = best_checkpoint(trainer)
            kept = (
                f"The best checkpoint so far is kept: {best}" if best else "No checkpoint was kept."
            )
            return (
                f"training stopped in epoch {callback.stopped_epoch + 1}: {callback.monitor} became "
                f"{value:.4g}. The learning rate is probably too high ({type(optimizer).__name__} "
                f"lr={optimizer.param_groups[0]['lr']:g}); try a smaller optimizer.lr. {kept}"
            )
    return None


def best_checkpoint(trainer: pl.Trainer) -> str:
    """The best checkpoint's path so far, of the first ModelCheckpoint that monitors a metric
    (whatever order the config lists the callbacks in), or ""."""
    savers = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    monitoring = [c for c in savers if c.monitor] or savers
    return monitoring[0].best_model_path if monitoring else ""


def test_best_checkpoint(trainer: pl.Trainer, model: pl.LightningModule, datamodule) -> str:
    """The official test set, once, on the best checkpoint by val/acc (or the final weights);
    returns the checkpoint's file name (or "final weights")."""
    best = best_checkpoint(trainer)
    if best:
        # Only the weights, read as data (weights_only): restoring the whole checkpoint would
        # also rewind callbacks, and weight averaging would swap its average back out.
        model.load_state_dict(read_checkpoint(best)["state_dict"])
    trainer.test(model, datamodule=datamodule, verbose=False)
    return Path(best).name if best else "final weights"
