"""A run's record (run_config.yaml), the folder door's third part: what `resume=` reads back
from a run folder, as names and numbers, and the check that a resume may continue the run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mnist_lightning.config import CONFIG_DIR, RUN_CONFIG
from mnist_lightning.errors import ConfigError, UserError
from mnist_lightning.folders import DamagedFile, read_yaml

RECORD_FORMAT = 2
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
# Keys that hold a run's parts (the Trainer's plugins, callbacks and loggers): never settings.
PARTS = frozenset({"plugins", "callbacks", "logger"})
# Top-level parts of the config that are not the run's settings: places, the command's own.
NOT_SETTINGS = ("paths", "logger", "hydra", "resume", "ckpt_path")
# What may be given beside resume=: where the data and the trackers are; the classes of your own
# and the parts removed that the run was started with (named again, as only a command line can).
RESUME_KEYS = ("resume", "ckpt_path", "data.data_dir", "data.download", "data.mirrors")
RESUME_PREFIXES = ("logger.", "paths.", "hydra.")
A_NAME = re.compile(r"[\w.+\-]*(/[\w.+\-]+)?")  # relu, 32-true, val/acc: never a path or URL


class RunRecord(BaseModel):
    """run_config.yaml: what a run is, as names and numbers. `choices` are the option chosen per
    config group (`optimizer: adam`); `settings` every value of the run that is not a place (the
    data folder, the run folder, a tracker's address) or code; `typed_targets` the classes and
    `removed` the parts (`~callbacks.<name>`) the command line named, which a resume must name
    again (never imported or applied from here); `overrides` the command's own, for people."""

    model_config = ConfigDict(strict=True, extra="forbid")

    format: Literal[2]
    choices: dict[str, str | list[str] | None] = {}  # a list: logger=[csv,tensorboard]
    settings: dict[str, Any] = {}
    typed_targets: dict[str, str] = {}
    removed: list[str] = []
    overrides: list[str] = []


def given(overrides: list[str]) -> dict[str, str]:
    """`key=value` overrides by key (`+`/`++` aside)."""
    found = {}
    for override in overrides:
        key, _, value = override.partition("=")
        found[key.lstrip("+")] = value
    return found


def typed_targets(overrides: list[str]) -> dict[str, str]:
    """The classes the command line names: its `..._target_=...` overrides."""
    return {k: v for k, v in given(overrides).items() if k.endswith("_target_")}


def removed_parts(overrides: list[str]) -> list[str]:
    """The parts the command line removes: `~callbacks.<name>`, `callbacks.<name>=null` (and the
    same of loggers), as written; also `~` of a part's setting, which the record cannot hold
    (a setting set to null it holds)."""
    parts = ("callbacks", "logger")
    found = []
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        path = key.lstrip("~").split(".")
        removes = override.startswith("~") or (value == "null" and len(path) <= 2)
        if removes and path[0] in parts:
            found.append(override)
    return sorted(found)


def _record_problems(node: Any, where: str) -> list[str]:
    """Names and numbers only: no Hydra keys, no places, no text that could be a path or URL.
    (A walk rather than a recursive pydantic type: it names the one bad value by its path.)"""
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


def _is_option(group: str, option: str | list[str]) -> bool:
    names = option if isinstance(option, list) and group == "logger" else [option]
    return all(
        isinstance(n, str)
        and re.fullmatch(r"\w+", n)
        and (Path(CONFIG_DIR) / group / f"{n}.yaml").is_file()
        for n in names
    )


def choice_override(group: str, option: str | list[str]) -> str:
    """The override that chooses a recorded option again (`logger=[csv,tensorboard]`)."""
    return f"{group}=[{','.join(option)}]" if isinstance(option, list) else f"{group}={option}"


def read_record(folder: str | Path) -> RunRecord:
    """A run folder's run_config.yaml, checked: its structure, its choices against conf/, its
    settings as names and numbers (typed and ranged later, with the whole config)."""
    path = Path(folder) / RUN_CONFIG
    redo = "start a new run instead"
    try:
        loaded = read_yaml(path)
    except DamagedFile as error:
        raise DamagedFile(f"{error}; {redo}.") from None
    if not isinstance(loaded, dict) or loaded.get("format") != RECORD_FORMAT:
        raise DamagedFile(
            f"{path} is not a run record of this version of the project; {redo} (checkpoints "
            "of earlier runs still load in evaluate, predict, export and serve)."
        )
    problems = _record_problems(loaded.get("settings"), "settings")
    problems += _record_problems(loaded.get("choices"), "choices")
    try:
        record = RunRecord.model_validate(loaded)
    except ValidationError as error:
        detail = error.errors()[0]
        where = ".".join(str(part) for part in detail["loc"])
        problems.append(f"{where}: {detail['msg'].lower()}")
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
        raise DamagedFile(f"{path}: {problems[0]}; refusing to resume from it.")
    return record


def check_resume(folder: Path, overrides: list[str], output_dir: Path | None = None) -> RunRecord:
    """Whether `resume=<folder>` with these overrides may continue the run there, before anything
    is written: a readable record, no override that would change the
    run, and the same classes of your own and removed parts as when it started; the command's
    output folder (hydra.run.dir), if given, must be the run's. Returns the record; raises
    DamagedFile or ConfigError (one line)."""
    if output_dir is not None and output_dir.resolve() != folder.resolve():
        raise ConfigError(
            f"resume={folder} continues the run in its own folder; drop "
            f"hydra.run.dir={output_dir}, or start a new run there instead."
        )
    named, removed = typed_targets(overrides), removed_parts(overrides)
    refused = [
        f"{k}={v}" if v else k
        for k, v in given(overrides).items()
        if k not in RESUME_KEYS
        and not k.startswith(RESUME_PREFIXES)
        and k not in named
        and not any(k == part.split("=")[0].lstrip("+") for part in removed)
    ]
    if refused:
        raise ConfigError(
            f"resume continues {folder} with its own recorded settings ({RUN_CONFIG}); "
            f"these overrides would change the run: {' '.join(refused)}. Drop them, or start "
            "a new run with them."
        )
    if not (folder / RUN_CONFIG).is_file():
        raise UserError(f"resume={folder}: not a run folder of this project (no {RUN_CONFIG})")
    record = read_record(folder)
    if named != record.typed_targets or removed != record.removed:
        needed = [f"++{k}={v}" for k, v in record.typed_targets.items()] + record.removed
        raise ConfigError(
            f"{folder} was started with classes of your own or with parts removed; resume it "
            f"naming the same ones (code runs, and parts go, only where you name it): python -m "
            f"mnist_lightning.train resume={folder} {' '.join(needed)}".rstrip()
        )
    return record
