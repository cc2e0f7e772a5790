"""A run's folder: how a run starts in it or continues, and its record.

`run_config.yaml` holds the run's own config as it was composed (`config`, its interpolations
unresolved), the option chosen per config group and the command's overrides. `resume=<run>`
continues with that config: `${paths.output_dir}` and the like resolve again for the folder as
it is now, and where the data and the trackers are comes from the command that resumes. A run
folder is yours, like your configs: resume only your own (folders.py, docs/trust.md).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.config import RUN_CONFIG, override_key, run_dir
from mnist_lightning.data import DATA_SOURCE
from mnist_lightning.doors.checkpoints import load_trained
from mnist_lightning.errors import CheckpointError, ConfigError, OutputError, UserError
from mnist_lightning.folders import (
    CHECKPOINTS,
    LAST,
    RESULTS,
    DamagedFile,
    FolderLock,
    already_holds_a_run,
    read_results,
    run_folder_of,
)
from mnist_lightning.record import (
    LENGTH_KEYS,
    RECORD_FORMAT,
    check_resume,
    length_overrides,
    read_record,
)
from mnist_lightning.settings import TrainSettings
from mnist_lightning.training.check import check
from mnist_lightning.training.resume import Resume

log = logging.getLogger(__name__)
# The config's nodes a record leaves out: Hydra's, the folders (paths), and the command's own.
NOT_RECORDED = ("hydra", "paths", "resume", "ckpt_path")


def is_rank_zero() -> bool:
    """Whether this process is rank zero (Lightning's other DDP processes re-run the command)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def hydra_part(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any], list[str], bool]:
    """The config without Hydra's node, the option chosen per group, the command's overrides,
    and whether it is a multirun job: from a composed config or from the running Hydra app."""
    if "hydra" in cfg:
        hydra_cfg = cfg.hydra
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    elif HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
    else:
        return cfg, {}, [], False
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices)
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    return cfg, choices, overrides, hydra_cfg.mode == RunMode.MULTIRUN


# What a trained model's weights bring with them: its network.
NETWORK_KEYS = ("net", "activation", "maxout_pieces")
NETWORK_OVERRIDES = ("model.net", "model/net", "model.activation", "model.maxout_pieces")


def start_from(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A new run that starts from a trained model's weights (`init_from=`), read through the
    checkpoint door as a file from others: the config with that model's network, which the
    command line may not name too."""
    try:
        trained = load_trained(cfg.init_from)
    except CheckpointError as error:
        raise CheckpointError(f"init_from={cfg.init_from}: {error}") from None
    net = trained.settings.get("net") or {}
    keys = [(o, override_key(o)) for o in overrides]
    named = [o for o, key in keys if key in NETWORK_OVERRIDES or key.startswith("model.net.")]
    if named:
        raise ConfigError(
            f"init_from={cfg.init_from}: the network comes with its weights "
            f"({net.get('name') or net.get('_target_')}, {trained.settings.get('activation')}); drop "
            f"{' '.join(named)}, or train that network from the start instead."
        )
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in NETWORK_KEYS:
            cfg.model[key] = trained.settings.get(key, cfg.model.get(key))
    return cfg


class RunFolder:
    """A run's folder, as it is now: its lock, its record, its checkpoints, its results."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.checkpoints = self.path / CHECKPOINTS
        self.record_file = self.path / RUN_CONFIG
        self.metrics_file = self.path / RESULTS

    @contextmanager
    def locked(self):
        """The folder's lock, held by rank zero (DDP's other processes join its run); and, when
        checkpoints/ links to a folder elsewhere (a scratch disk), that folder's too: two runs
        must not write one folder of checkpoints, however they reach it."""
        if not is_rank_zero():
            yield
            return
        with FolderLock(self.path):
            elsewhere = self.checkpoints.resolve()
            if not self.checkpoints.is_dir() or elsewhere.is_relative_to(self.path):
                yield
                return
            with FolderLock(elsewhere):
                yield

    def holds_a_run(self) -> bool:
        return self.record_file.is_file()

    # --- starting or continuing ---------------------------------------------------------------

    def start_or_continue(self, cfg: DictConfig) -> tuple[TrainSettings, Resume | None]:
        """The run's settings, checked (training/check.py), and where it continues from (None:
        a new run).

        `resume=`/`ckpt_path=` continue the run with its recorded config; a sweep run again in
        the same folder continues its killed jobs. A new run refuses a folder that holds a run,
        or one inside a run's folder.
        """
        cfg, choices, overrides, resume = self._config(cfg)
        settings = check(cfg, overrides, choices)
        if resume is not None:
            longer = length_overrides(overrides)
            if longer:  # training longer: the run goes on, whether it finished or not
                self._record_longer(settings, longer, resume.step)
            else:
                resume.finished = read_results(self.path)
        return settings, resume

    def _config(self, cfg: DictConfig) -> tuple[DictConfig, dict, list[str], Resume | None]:
        cfg, choices, overrides, multirun = hydra_part(cfg)
        if cfg.get("resume") or cfg.get("ckpt_path"):
            if is_rank_zero():
                resumed = Path(run_dir(cfg.get("resume"), cfg.get("ckpt_path"), ""))
                record = check_resume(resumed, overrides, self.path)
            else:
                record = read_record(self.path)
            checkpoint = self._resume_point(cfg)
            cfg = self._resumed(record, cfg, overrides)
            return cfg, record["choices"], overrides, Resume.of(self.path, checkpoint, cfg)
        if cfg.get("init_from"):
            cfg = start_from(cfg, overrides)
        enclosing = run_folder_of(self.path.parent)
        if enclosing is not None:
            raise OutputError(
                f"{self.path} is inside the run folder {enclosing}; choose a folder of its "
                "own (hydra.run.dir=<folder>)."
            )
        if not self.holds_a_run() or not is_rank_zero():
            # (DDP's other processes start once rank zero wrote the record)
            return cfg, choices, overrides, None
        if not multirun:
            raise already_holds_a_run(self.path)
        record = read_record(self.path)
        if record["overrides"] != overrides:
            raise ConfigError(
                f"{self.path} holds another sweep job ({' '.join(record['overrides'])}); run this "
                "sweep in a new folder (hydra.sweep.dir=<folder>)."
            )
        last = self.checkpoints / LAST
        resume = Resume.of(self.path, last, cfg) if last.is_file() else None
        return cfg, choices, overrides, resume

    def _resume_point(self, cfg: DictConfig) -> Path:
        if cfg.get("ckpt_path"):
            checkpoint = Path(cfg.ckpt_path).expanduser().resolve()
            if not checkpoint.is_file():
                raise UserError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        else:
            checkpoint = self.checkpoints / LAST
        if not checkpoint.is_file():
            raise UserError(
                f"resume={self.path}: it has no {CHECKPOINTS}/{LAST}; the run stopped before its "
                "first epoch ended. Start it again instead."
            )
        return checkpoint

    def _resumed(self, record: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
        """The run's recorded config, with the folders, the data's place and the trackers' as
        the resuming command has them (`cfg`): its paths, its data_dir, download and mirrors, and
        any `logger.` setting it gives (++logger.mlflow.tracking_uri=...)."""
        try:
            resumed = self._merged(record["config"], cfg, overrides)
            OmegaConf.to_container(resumed, resolve=True)  # every interpolation resolves
            return resumed
        except Exception as error:  # noqa: BLE001 - whatever a hand edit breaks is the file's
            reason = " ".join(str(error).split())[:300]  # (OmegaConf's: the key on a later line)
            raise DamagedFile(
                f"{self.record_file}: its config cannot be read ({type(error).__name__}: "
                f"{reason}); mend the edit, or start a new run."
            ) from None

    def _merged(self, config: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
        resumed = OmegaConf.create(config)
        with open_dict(resumed):
            resumed.paths = cfg.paths
            resumed.resume = resumed.ckpt_path = None  # as the run was started
            for key in DATA_SOURCE:
                resumed.data[key] = OmegaConf.select(cfg, f"data.{key}")
            for override in overrides:
                key = override_key(override)
                if key.startswith("logger.") or key in LENGTH_KEYS:
                    OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
        return resumed

    def save_record(self, settings: TrainSettings) -> None:
        """Write run_config.yaml: what `resume=` continues with (rank zero's to write)."""
        if not is_rank_zero():
            return
        config = {k: v for k, v in settings.composed.items() if k not in NOT_RECORDED}
        config["data"] = {k: v for k, v in config["data"].items() if k not in DATA_SOURCE}
        if settings.lr_find:  # the rate it found is the run's
            config["optimizer"] = {**config["optimizer"], "lr": settings.optimizer["lr"]}
        record = {
            "format": RECORD_FORMAT,
            "overrides": settings.overrides,
            "choices": settings.choices,
            "config": config,
        }
        self._write_record(record)

    def _write_record(self, record: dict[str, Any]) -> None:
        header = "# What this run is: resume=<this folder> continues it with this config.\n"
        write_text_atomically(self.record_file, header + yaml.safe_dump(record, sort_keys=False))

    def _record_longer(self, settings: TrainSettings, longer: list[str], step: int) -> None:
        """The record of a run trained longer: its new length, for the next `resume=`, and when
        it was extended (`extended`: the overrides, from which step)."""
        if not is_rank_zero():
            return
        record = read_record(self.path)
        for key in LENGTH_KEYS:
            name = key.partition(".")[2]
            if name in settings.trainer:
                record["config"]["trainer"][name] = settings.trainer[name]
        record.setdefault("extended", []).append({"overrides": longer, "from_step": step})
        self._write_record(record)
