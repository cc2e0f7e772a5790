"""A run's folder: how a run starts in it or continues, and its record.

`run_config.yaml` (schema.RunRecord) holds the option chosen per config group and the run's
settings, as names and numbers. `resume=<run>` composes the project's own conf/ again with the
recorded choices, then applies the recorded settings, checked like any command line: no file
names the code to run, the data to use, or a folder to write to; places come from the folder
as it is now and from the command.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.config import CONFIG_DIR, group_configs
from mnist_lightning.errors import ConfigError, OutputError, UserError, first_line
from mnist_lightning.schema import RECORD_FORMAT, RunRecord, is_object_config, plain_container
from mnist_lightning.training.checkpoints import CHECKPOINTS, LAST
from mnist_lightning.training.folders import (
    RUN_CONFIG,
    FolderLock,
    already_holds_a_run,
    run_folder_of,
)

log = logging.getLogger(__name__)

METRICS = "metrics.json"
# The config groups whose option a record keeps: what composing the run again needs.
RECORDED_GROUPS = (
    "data",
    "augment",
    "model",
    "model/net",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "gradient_descent",
    "debug",
)
# Settings that say where things are or come from. They are derived again by every command
# (from the folder, the environment and the command line) and never kept in a record.
PLACES = frozenset(
    {
        "data_dir",
        "download",
        "mirrors",
        "dirpath",
        "filename",
        "output_dir",
        "save_dir",
        "default_root_dir",
        "tracking_uri",
        "artifact_location",
        "log_dir",
        "root_dir",
    }
)
# Top-level parts of the config that are not the run's settings: places, the command's own.
NOT_SETTINGS = ("paths", "logger", "hydra", "resume", "ckpt_path")
# What may be given beside resume=: where the data and the trackers are, and the classes of your
# own the run was started with (named again, as only a command line can).
RESUME_KEYS = ("resume", "ckpt_path", "data.data_dir", "data.download", "data.mirrors")
RESUME_PREFIXES = ("logger.", "paths.", "hydra.")
A_NAME = re.compile(r"[\w.+\-]*(/[\w.+\-]+)?")  # relu, 32-true, val/acc: never a path or URL


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


def _given(overrides: list[str]) -> dict[str, str]:
    """`key=value` overrides by key (`+`/`++` aside)."""
    given = {}
    for override in overrides:
        key, _, value = override.partition("=")
        given[key.lstrip("+")] = value
    return given


def typed_targets(overrides: list[str]) -> dict[str, str]:
    """The classes the command line names: its `..._target_=...` overrides."""
    return {k: v for k, v in _given(overrides).items() if k.endswith("_target_")}


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as names and numbers: the config without places, code (`_target_`,
    the objects Hydra builds) and the command's own options."""

    def keep(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: keep(v)
                for k, v in node.items()
                if not k.startswith("_") and k not in PLACES and not is_object_config(v)
            }
        return node

    config = plain_container(cfg)
    settings = {k: keep(v) for k, v in config.items() if k not in NOT_SETTINGS}
    callbacks = config.get("callbacks") or {}
    settings["callbacks"] = {  # a callback's settings; a removed one is not recorded at all
        name: keep(node) for name, node in callbacks.items() if is_object_config(node)
    }
    net = config["model"].get("net")
    if is_object_config(net):  # a network of your own: its settings (its class is typed again)
        settings["model"]["net"] = keep(net)
    return settings


def _record_problems(node: Any, where: str) -> list[str]:
    """Names and numbers only: no Hydra keys, no places, no text that could be a path or URL."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            name = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str) or key.startswith("_") or key in PLACES:
                found.append(f"{name}: not a setting a record may hold")
            else:
                found += _record_problems(value, name)
        return found
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _record_problems(v, f"{where}[{i}]")]
    if isinstance(node, str) and (".." in node or not A_NAME.fullmatch(node)):
        return [f"{where}={node!r}: not a name"]
    if node is None or isinstance(node, bool | int | float | str):
        return []
    return [f"{where}: not a name or a number"]


def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml composed with `overrides`, inside a Hydra app or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=overrides, return_hydra_config=True)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


class RunFolder:
    """A run's folder, as it is now: its lock, its record, its checkpoints, its results."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.checkpoints = self.path / CHECKPOINTS
        self.record_file = self.path / RUN_CONFIG
        self.metrics_file = self.path / METRICS
        self.choices: dict[str, Any] = {}  # what the command chose per group, and its overrides
        self.overrides: list[str] = []

    def locked(self):
        """The folder's lock, held by rank zero (DDP's other processes join its run)."""
        return FolderLock(self.path) if is_rank_zero() else nullcontext()

    def holds_a_run(self) -> bool:
        return self.record_file.is_file()

    # --- starting or continuing ---------------------------------------------------------------

    def start_or_continue(self, cfg: DictConfig) -> tuple[DictConfig, Path | None]:
        """The config to train with, and the checkpoint to continue from (None: a new run).

        `resume=`/`ckpt_path=` continue the run with its recorded settings; a sweep run again in
        the same folder continues its killed jobs. A new run refuses a folder that holds a run,
        or one inside a run's folder.
        """
        cfg, self.choices, self.overrides, multirun = hydra_part(cfg)
        overrides = self.overrides
        if cfg.get("resume") or cfg.get("ckpt_path"):
            checkpoint = self._resume_point(cfg)
            return self._recomposed(overrides), checkpoint
        enclosing = run_folder_of(self.path.parent)
        if enclosing is not None:
            raise OutputError(
                f"{self.path} is inside the run folder {enclosing}; choose a folder of its "
                "own (hydra.run.dir=<folder>)."
            )
        if not self.holds_a_run() or not is_rank_zero():
            return cfg, None  # (DDP's other processes start once rank zero wrote the record)
        if not multirun:
            raise already_holds_a_run(self.path)
        record = self.read_record()
        if record.overrides != overrides:
            raise ConfigError(
                f"{self.path} holds another sweep job ({' '.join(record.overrides)}); run this "
                "sweep in a new folder (hydra.sweep.dir=<folder>)."
            )
        last = self.checkpoints / LAST
        return cfg, (last if last.is_file() else None)

    def _resume_point(self, cfg: DictConfig) -> Path:
        if cfg.get("ckpt_path"):
            checkpoint = Path(cfg.ckpt_path).expanduser().resolve()
            if not checkpoint.is_file():
                raise UserError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        else:
            checkpoint = self.checkpoints / LAST
        if not self.holds_a_run():
            raise UserError(
                f"resume={self.path}: not a run folder of this project (no {RUN_CONFIG})"
            )
        if not checkpoint.is_file():
            raise UserError(
                f"resume={self.path}: it has no {CHECKPOINTS}/{LAST}; the run stopped before its "
                "first epoch ended. Start it again instead."
            )
        return checkpoint

    def _recomposed(self, overrides: list[str]) -> DictConfig:
        """The run's config again: conf/ with the recorded choices, the command's places and
        classes, then the recorded settings."""
        given = _given(overrides)
        refused = [
            f"{k}={v}"
            for k, v in given.items()
            if k not in RESUME_KEYS
            and not k.startswith(RESUME_PREFIXES)
            and k not in typed_targets(overrides)
        ]
        if refused:
            raise ConfigError(
                f"resume continues {self.path} with its own recorded settings ({RUN_CONFIG}); "
                f"these overrides would change the run: {' '.join(refused)}. Drop them, or start "
                "a new run with them."
            )
        record = self.read_record()
        named = typed_targets(overrides)
        if named != record.typed_targets:
            needed = " ".join(f"++{k}={v}" for k, v in record.typed_targets.items())
            raise ConfigError(
                f"{self.path} was started with classes of your own; resume it naming the same ones "
                f"(code runs only where you name it): python -m mnist_lightning.train "
                f"resume={self.path} {needed}".rstrip()
            )
        places = [
            o
            for o in overrides
            if o.split("=", 1)[0].lstrip("+") not in ("resume", "ckpt_path")
            and not o.startswith("hydra.")
        ]
        choices = [f"{group}={option}" for group, option in record.choices.items() if option]
        recomposed, *_ = hydra_part(
            compose_train([*choices, *places, f"paths.output_dir={self.path}"])
        )
        settings = OmegaConf.create(record.settings)
        with open_dict(recomposed):
            recorded_callbacks = settings.pop("callbacks", {})
            callbacks = recomposed.get("callbacks") or {}
            for name in [n for n, node in callbacks.items() if is_object_config(node)]:
                if name not in recorded_callbacks:
                    del callbacks[name]  # removed when the run started (~callbacks.<name>)
            try:
                merged = OmegaConf.merge(recomposed, settings, {"callbacks": recorded_callbacks})
            except OmegaConfBaseException as error:
                raise ConfigError(f"{self.record_file}: {first_line(error)}") from None
        return merged

    # --- the record -----------------------------------------------------------------------------

    def read_record(self) -> RunRecord:
        """run_config.yaml, checked: its structure (schema.RunRecord), its choices against conf/,
        its settings as names and numbers (typed and ranged later, with the whole config)."""
        try:
            loaded = yaml.safe_load(self.record_file.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(
                f"{self.record_file} cannot be read ({first_line(error)}); start a new run instead."
            ) from None
        if not isinstance(loaded, dict) or loaded.get("format") != RECORD_FORMAT:
            raise ConfigError(
                f"{self.record_file} is not a run record of this version of the project; "
                "start a new run instead (checkpoints of earlier runs still load in evaluate, "
                "predict, export and serve)."
            )
        problems = _record_problems(loaded.get("settings"), "settings")
        problems += _record_problems(loaded.get("choices"), "choices")
        try:
            record = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunRecord), loaded))
        except OmegaConfBaseException as error:
            problems.append(first_line(error))
            record = None
        if record is not None:
            for group, option in record.choices.items():
                if group not in RECORDED_GROUPS:
                    problems.append(f"choices.{group}: not a config group a record keeps")
                elif option and not _is_option(group, option):
                    problems.append(f"choices.{group}={option}: conf/{group}/ has no such option")
            for key in sorted(set(record.settings) & set(NOT_SETTINGS)):
                problems.append(f"settings.{key}: not a setting a record may hold")
        if problems:
            raise ConfigError(f"{self.record_file}: {problems[0]}; refusing to resume from it.")
        return record

    def save_record(self, cfg: DictConfig) -> None:
        """Write run_config.yaml: what `resume=` continues with (rank zero's to write)."""
        if not is_rank_zero():
            return
        choices, overrides = self.choices, self.overrides
        recorded = {group: choices.get(group) for group in RECORDED_GROUPS}
        if "logger" not in choices:  # a list of loggers: logger=[tensorboard,csv]
            recorded["logger"] = _given(overrides).get("logger")
        record = RunRecord(
            choices=recorded,
            settings=settings_of(cfg),
            typed_targets=typed_targets(overrides),
            overrides=overrides,
        )
        text = OmegaConf.to_yaml(OmegaConf.structured(record))
        header = "# What this run is (resume=<this folder> continues it); read back as data.\n"
        write_text_atomically(self.record_file, header + text)

    def finished_metrics(self) -> dict | None:
        """The results of a run that already finished in this folder, or None."""
        try:
            metrics = json.loads(self.metrics_file.read_text())
        except (OSError, ValueError):
            return None
        return metrics if isinstance(metrics, dict) else None

    # --- logs of a resumed run -----------------------------------------------------------------

    def forget_logged_after(self, cfg: DictConfig, step: int) -> list[dict[str, Any]]:
        """Before a run continues from `step`: TensorBoard hides what the killed attempt wrote
        after it (`purge_step`); the CSV log's earlier rows are returned, for `log_again`."""
        for node in group_configs(cfg, "logger", TensorBoardLogger):
            node.purge_step = step
        csv_log = self.path / "metrics.csv"
        if not csv_log.is_file():
            return []
        with csv_log.open(newline="") as f:
            rows = [
                {k: _number(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)
                if row.get("step", "").isdigit() and int(row["step"]) < step
            ]
        return rows

    def log_again(self, loggers: list, rows: list[dict[str, Any]]) -> None:
        """The CSV rows before the resume point, written again through the CSV logger."""
        for logger in loggers:
            if not isinstance(logger, CSVLogger):
                continue
            with warnings.catch_warnings():  # "Previous log files ... will be deleted": kept here
                warnings.simplefilter("ignore")
                logger.experiment  # noqa: B018 - starts the new file, as Lightning would
            for row in rows:
                values = {k: v for k, v in row.items() if k not in ("step",)}
                logger.log_metrics(values, step=row["step"])
            logger.save()


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _is_option(group: str, option: str) -> bool:
    names = option.strip("[]").split(",") if group == "logger" else [option]
    return all(
        re.fullmatch(r"\w+", n.strip())
        and (Path(CONFIG_DIR) / group / f"{n.strip()}.yaml").is_file()
        for n in names
    )
