"""A run's folder: how a run starts in it or continues, and its record.

`run_config.yaml` (doors/record.RunRecord) holds the option chosen per config group and the run's
settings, as names and numbers. `resume=<run>` composes the project's own conf/ again with the
recorded choices, then applies the recorded settings, checked like any command line: no file
names the code to run, the data to use, or a folder to write to; places come from the folder
as it is now and from the command.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.config import CONFIG_DIR, RUN_CONFIG, hydra_quoted, run_dir
from mnist_lightning.data.augment import BatchAugment
from mnist_lightning.doors.record import (
    NOT_SETTINGS,
    PARTS,
    PLACES,
    RECORD_FORMAT,
    RECORDED_GROUPS,
    RunRecord,
    check_resume,
    choice_override,
    given,
    read_record,
    removed_parts,
    typed_targets,
)
from mnist_lightning.doors.settings import is_object_config, plain_container, takes_plain_value
from mnist_lightning.errors import ConfigError, OutputError, UserError, first_line
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
from mnist_lightning.models.networks import NETWORKS
from mnist_lightning.models.optim import OPTIMIZERS, SCHEDULERS
from mnist_lightning.training.resume import Resume

log = logging.getLogger(__name__)


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


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as names and numbers: the config without places, code (`_target_`,
    the objects Hydra builds) and the command's own options."""

    def keep(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: keep(v)
                for k, v in node.items()
                if not k.startswith("_")
                and k not in PLACES
                and k not in PARTS
                and not is_object_config(v)
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
        self.metrics_file = self.path / RESULTS
        self.choices: dict[str, Any] = {}  # what the command chose per group, and its overrides
        self.overrides: list[str] = []

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

    def start_or_continue(self, cfg: DictConfig) -> tuple[DictConfig, Resume | None]:
        """The config to train with, and where it continues from (None: a new run).

        `resume=`/`ckpt_path=` continue the run with its recorded settings; a sweep run again in
        the same folder continues its killed jobs. A new run refuses a folder that holds a run,
        or one inside a run's folder.
        """
        cfg, self.choices, self.overrides, multirun = hydra_part(cfg)
        overrides = self.overrides
        if cfg.get("resume") or cfg.get("ckpt_path"):
            if is_rank_zero():
                resumed = Path(run_dir(cfg.get("resume"), cfg.get("ckpt_path"), ""))
                record = check_resume(resumed, overrides, self.path)
            else:
                record = self.read_record()
            checkpoint = self._resume_point(cfg)
            cfg = self._recomposed(record, overrides)
            return cfg, Resume.of(self.path, checkpoint, cfg)
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
        return cfg, (Resume.of(self.path, last, cfg) if last.is_file() else None)

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

    def _recomposed(self, record: RunRecord, overrides: list[str]) -> DictConfig:
        """The run's config again: conf/ with the recorded choices, the command's places, classes
        and removed parts, then the recorded settings, each a value of a setting that the
        composed config holds or that its class takes: nothing read back replaces, adds or
        removes a part of the config (a callback, a logger, a plugin, their lists)."""
        command = [
            o
            for o in overrides
            if o.split("=", 1)[0].lstrip("+") not in ("resume", "ckpt_path")
            and not o.startswith("hydra.")
        ]
        choices = [choice_override(g, option) for g, option in record.choices.items() if option]
        recomposed, *_ = hydra_part(
            compose_train([*choices, *command, f"paths.output_dir={hydra_quoted(str(self.path))}"])
        )
        with open_dict(recomposed):
            for path, value in _leaves(record.settings):
                problem = _setting_problem(recomposed, path)
                if problem is None:
                    parent = (
                        OmegaConf.select(recomposed, ".".join(path[:-1])) if path[:-1] else None
                    )
                    try:
                        (recomposed if parent is None else parent)[path[-1]] = value
                    except OmegaConfBaseException as error:
                        problem = first_line(error)
                if problem:
                    raise DamagedFile(
                        f"{self.record_file}: settings.{'.'.join(path)}: {problem}; refusing to "
                        "resume from it."
                    )
        OmegaConf.set_struct(recomposed, False)  # as a merged config: the run adds its own keys
        return recomposed

    # --- the record -----------------------------------------------------------------------------

    def read_record(self) -> RunRecord:
        return read_record(self.path)

    def save_record(self, cfg: DictConfig) -> None:
        """Write run_config.yaml: what `resume=` continues with (rank zero's to write)."""
        if not is_rank_zero():
            return
        choices, overrides = self.choices, self.overrides
        recorded = {group: choices.get(group) for group in RECORDED_GROUPS}
        if "logger" not in choices and (listed := given(overrides).get("logger")):
            names = listed.strip("[]").split(",")  # a list of loggers: logger=[tensorboard,csv]
            recorded["logger"] = [name.strip() for name in names if name.strip()]
        record = RunRecord(
            format=RECORD_FORMAT,
            choices=recorded,
            settings=settings_of(cfg),
            typed_targets=typed_targets(overrides),
            removed=removed_parts(overrides),
            overrides=overrides,
        )
        text = yaml.safe_dump(record.model_dump(), sort_keys=False)
        header = "# What this run is (resume=<this folder> continues it); read back as data.\n"
        write_text_atomically(self.record_file, header + text)

    def finished_metrics(self) -> dict | None:
        """The results of a run that already finished in this folder, or None (also when they
        are not whole: the run goes on from its last checkpoint and writes them again)."""
        return read_results(self.path)


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()):
    """(path, value) of every value in nested settings (a list is one value; an empty mapping
    sets nothing)."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


def _settings_class(parent_path: str, parent: Any) -> type | None:
    """The class whose settings the config node at `parent_path` is: its `_target_`, or the
    network, optimizer, scheduler or augmentation its name says; None for any other node."""
    if not isinstance(parent, DictConfig) or not parent_path:
        return None
    if "_target_" in parent:  # (a class of conf/'s, or one the command line names)
        try:
            return get_class(parent._target_)
        except (ImportError, ValueError):
            return None
    named = {"model.net": NETWORKS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
    if parent_path in named:
        return named[parent_path].get(parent.get("name"))
    return BatchAugment if parent_path == "augment" else None


def _setting_problem(cfg: DictConfig, path: tuple[str, ...]) -> str | None:
    """Why a recorded value may not go at `path` of the composed config, or None. It must be a
    setting of a settings node (the command's own options, or a class's settings): one the
    config holds as a plain value, or one the node's class takes as a plain value; never a part
    (a callback, a logger, a node of settings, an object config or a list of them, a parameter
    that takes objects such as the Trainer's plugins)."""
    parent_path, key = ".".join(path[:-1]), path[-1]
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    cls = _settings_class(parent_path, parent)
    if not isinstance(parent, DictConfig) or (parent_path and cls is None):
        return "not a setting of the run's config"
    kept = key in parent
    current = OmegaConf.select(parent, key, throw_on_resolution_failure=False) if kept else None
    if key in PARTS or isinstance(current, DictConfig) or is_object_config(current):
        return "a part of the config, not a setting; a record cannot replace it"
    if kept:
        return None
    if cls is None or not takes_plain_value(cls, key):
        return "not a setting of the run's config"
    return None
