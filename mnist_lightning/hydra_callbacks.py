"""Hydra callbacks (conf/train.yaml's `hydra.callbacks`): what happens around a run or a sweep.

Import-light on purpose, like the Optuna sweeper plugin (hydra_plugins/): Hydra loads these in
the process that launches a sweep's jobs, which never trains and must not pay for importing
Lightning. Each imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnist_lightning.config import group_targets, run_dir
from mnist_lightning.errors import UserError
from mnist_lightning.folders import (
    FolderLock,
    already_holds_a_run,
    refuse_inside_a_run,
    run_folder_of,
    writable,
)
from mnist_lightning.record import check_resume


def _rank_zero() -> bool:
    # Lightning starts its other DDP processes with the same command and these variables set.
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


class LockRunFolder(Callback):
    """Take the command's folder before Hydra writes anything into it (its `.hydra/` record and
    log file): a folder in use by another command, one that cannot be
    written, or, for a new run or any other command, a folder that holds a run, is refused in
    one line, and nothing is written. `resume=` takes the run's own folder once its record and
    the command's overrides are checked (the folder door, folders.py); a sweep takes its
    sweep folder, but for a search with a stored study, which its workers share."""

    def __init__(self, command: str = "train") -> None:
        self.command = command
        self.lock: FolderLock | None = None

    def _take(
        self,
        folder: Path,
        kind: str,
        overrides: list[str],
        output_dir: Path | None = None,
        lock: bool = True,
    ) -> None:
        """`kind`: "new" (a new run, or another command's folder), "resume" or "sweep"."""
        if not _rank_zero():
            return
        try:
            is_a_run = run_folder_of(folder) == folder.resolve()
            if kind == "new" and self.command == "train" and is_a_run:
                raise already_holds_a_run(folder)
            setting = {"sweep": "hydra.sweep.dir", "new": "hydra.run.dir"}.get(kind, "resume")
            if kind in ("new", "sweep"):
                refuse_inside_a_run(folder, setting)
            else:
                check_resume(folder.resolve(), overrides, output_dir)
            writable(folder)
            if lock:
                self.lock = FolderLock(folder).__enter__()
        except UserError as error:
            self._release()
            print(f"error: {error}", file=sys.stdout, flush=True)
            raise SystemExit(1) from None  # a Hydra callback's exceptions only become warnings

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # (Only train's resume= and ckpt_path= continue a run; evaluate's ckpt_path= reads one.)
        resuming = self.command == "train" and (config.get("resume") or config.get("ckpt_path"))
        overrides = list(config.hydra.overrides.task)
        if resuming:  # the run's own folder, whatever hydra.run.dir says (refused beside it)
            folder = Path(run_dir(config.get("resume"), config.get("ckpt_path"), ""))
            self._take(folder, "resume", overrides, Path(config.hydra.run.dir))
        else:
            self._take(Path(config.hydra.run.dir), "new", overrides)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A search with a stored study is shared by its workers: each trial is one job folder,
        # numbered by the study, and each job takes its own folder.
        shared = bool(config.hydra.sweeper.get("storage"))
        self._take(Path(config.hydra.sweep.dir), "sweep", [], lock=not shared)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()


class SweepSummary(Callback):
    """summary.csv, summary.md and summary.png in the sweep folder when a multirun ends. A sweep
    in which no job succeeded ends with exit code 1 and one line (its summary still written)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_lightning.report import write_summary

        try:
            rows = write_summary(config.hydra.sweep.dir)
        except UserError as error:
            print(f"error: {error}", file=sys.stdout, flush=True)
            raise SystemExit(1) from None  # a Hydra callback's exceptions only become warnings
        if not any(row["status"] == "ok" for row in rows):
            print(
                f"error: no job of the sweep in {config.hydra.sweep.dir} succeeded; each job's "
                "failure.json says why (summary.md lists them).",
                flush=True,
            )
            raise SystemExit(1)


class PrepareTrackingStores(Callback):
    """Before a sweep's jobs start, create the MLflow store and experiment they share, so that
    jobs running at the same time do not race to create its tables (logger=mlflow)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # By the target's name: resolving the targets would import Lightning here.
        for node in group_targets(config.get("logger")):
            if not str(node._target_).endswith("MLFlowLogger"):
                continue
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=node.tracking_uri)
            if client.get_experiment_by_name(node.experiment_name) is None:
                client.create_experiment(node.experiment_name, node.get("artifact_location"))
