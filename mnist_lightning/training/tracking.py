"""What experiment trackers get beyond Lightning's own logging (metrics, model hyperparameters,
checkpoints): the run's whole config as parameters, and its figures and results as files."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from mnist_lightning.config import group_configs
from mnist_lightning.settings import TrainSettings

RUN_FOLDER_TAG = "run_folder"  # an MLflow run's tag: the run folder it is an attempt of
# The files of a run folder worth keeping beside a tracker's run, when they exist.
RUN_FILES = (
    "samples.png",
    "confusion_matrix.png",
    "misclassified.png",
    "lr_find.png",
    "gradient_flow.png",
    "metrics.json",
)


def keep_offline_runs_offline(loggers: dict) -> None:
    """An offline W&B run sends nothing at all: without this, wandb's service process still
    reports its own errors and telemetry over the network. Set WANDB_ERROR_REPORTING to decide
    otherwise."""
    if any(node.get("offline") for node in group_configs(loggers, WandbLogger)):
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def log_config(trainer, settings: TrainSettings) -> None:
    """The resolved config as parameters (`config/optimizer/lr`, ...) of every tracker.

    TensorBoard is left out: its HParams tab gets its own entry, beside the final metrics, when
    the run ends (results.log_hparams)."""
    if not trainer.is_global_zero:
        return
    config = {"config": settings.config()}
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(config)
        if isinstance(logger, MLFlowLogger):  # which folder's attempt it is (end_killed_attempts)
            folder = str(Path(settings.output_dir).resolve())
            logger.experiment.set_tag(logger.run_id, RUN_FOLDER_TAG, folder)


def end_killed_attempts(trainer, run_dir: Path) -> None:
    """Mark as KILLED the MLflow runs of this folder's earlier attempts that are still RUNNING: the
    train command holds the folder's lock, so no live process is writing them; they were killed."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            client = logger.experiment
            running = client.search_runs(
                [logger.experiment_id], filter_string="attributes.status = 'RUNNING'"
            )
            for attempt in running:
                tag = attempt.data.tags.get(RUN_FOLDER_TAG)
                if attempt.info.run_id != logger.run_id and tag == str(run_dir.resolve()):
                    client.set_terminated(attempt.info.run_id, status="KILLED")


def log_run_files(trainer, run_dir: Path, checkpoint: str = "") -> None:
    """The run's figures, metrics.json and tested checkpoint as files of its MLflow run, the
    figures as W&B images."""
    if not trainer.is_global_zero:
        return
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
            if checkpoint and Path(checkpoint).is_file():
                logger.experiment.log_artifact(logger.run_id, checkpoint, "checkpoints")
        elif isinstance(logger, WandbLogger):
            images = [path for path in files if path.suffix == ".png"]
            for path in images:
                logger.log_image(key=f"files/{path.stem}", images=[str(path)])


def finish_runs(trainer) -> None:
    """End the W&B run: W&B keeps one run per process open until it is finished, and the next
    job of a sweep in this process would otherwise log into it."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
