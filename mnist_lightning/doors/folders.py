"""The folder door: run and sweep folders, and the files read back from them.

A folder that a command will write into is data until it is checked: before anything is
written, a folder in which anything is a link (a symlink, or a file with more than one hard
link), or that is larger or deeper than a run's, is refused in one line (`refuse_links`). The
project's own writes replace files by rename (atomic.py) or create them exclusively, so that
they never follow a link. Every file read back goes through one reader per kind here: bounded in
size, links refused, YAML without aliases and JSON within a depth, and any failure, whatever its
exception, is one FileRefused line naming the file and what to do.

Also: what makes a folder a run's, the lock a command holds on the folder it writes, and where a
command may write. Import-light on purpose: Hydra's launcher process uses it
(hydra_callbacks.py) before Hydra writes anything into a folder.
"""

from __future__ import annotations

import atexit
import csv
import errno
import io
import json
import os
import re
import socket
import stat
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, ValidationError

from mnist_lightning.config import CONFIG_DIR, RUN_CONFIG
from mnist_lightning.errors import ConfigError, OutputError, UserError, first_line

LOCK_FILE = ".lock"


def _write_holder(fd: int) -> None:
    """Who holds the lock, for the line that refuses another process."""
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({command[:200]})".encode(), 0)


class FolderLock:
    """`with FolderLock(folder):` holds filelock's exclusive lock on `<folder>/.lock`.

    filelock takes a `flock` (dropped by the operating system however the process ends, so a
    crashed run never leaves a stale lock), opens the file without following a link, retries a
    file that its holder unlinked meanwhile, and, as a singleton per folder, is re-entrant within
    the process: the Hydra callback takes it before the job starts, the job takes it again.
    Added here: the holder's line in the file, the one-line refusal naming it, and the file
    removed by its last holder while still held (filelock counts holds privately: `_holds`).
    """

    _holds: dict[Path, int] = {}  # this process's holds, by folder

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        self.lock = FileLock(
            self.folder / LOCK_FILE,
            blocking=False,
            is_singleton=True,
            thread_local=False,
            on_acquired=_write_holder,
        )

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            try:
                holder = read_bytes(self.folder / LOCK_FILE, 4096).decode(errors="replace").strip()
            except FileRefused:
                holder = ""
            raise OutputError(
                f"{self.folder} is in use by {holder or 'another process'}; wait for that run to "
                "end or stop it, or choose another folder (hydra.run.dir=<folder>)."
            ) from None
        FolderLock._holds[self.folder] = FolderLock._holds.get(self.folder, 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        holds = FolderLock._holds.pop(self.folder, 0) - 1
        if holds > 0:
            FolderLock._holds[self.folder] = holds
        elif holds == 0:  # the last hold: the file goes while it is still locked
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
        if holds >= 0:
            self.lock.release()

    def __reduce__(self) -> tuple:  # a launcher pickles the callback holding this: unheld there
        return FolderLock, (self.folder,)

    @staticmethod
    def remove_lock_files() -> None:
        """At exit, however the command ended (sys.exit skips the callbacks' ends): no lock file
        is left behind; the operating system drops the locks themselves."""
        for folder in FolderLock._holds:
            (folder / LOCK_FILE).unlink(missing_ok=True)
        FolderLock._holds.clear()


atexit.register(FolderLock.remove_lock_files)


def already_holds_a_run(folder: Path) -> OutputError:
    """The refusal of a new run in a folder that holds one."""
    return OutputError(
        f"{folder} already holds a run; continue it with resume={folder}, or choose another "
        "folder (hydra.run.dir=<folder>)."
    )


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder `path` is in (or is), if any."""
    path = Path(path).expanduser().resolve()
    for folder in (path, *path.parents):
        if (folder / RUN_CONFIG).is_file():
            return folder
    return None


def refuse_inside_a_run(path: str | Path, what: str) -> Path:
    """Refuse, before any work, an output that would land in a run folder (replacing its
    checkpoints, metrics.json, run_config.yaml or figures): a run's files are its results."""
    path = Path(path).expanduser().resolve()
    folder = run_folder_of(path if path.is_dir() else path.parent)
    if folder is not None:
        raise OutputError(
            f"{what}={path} is inside the run folder {folder}, whose files are its results; "
            "write somewhere else."
        )
    if path.suffix == ".ckpt":
        raise OutputError(f"{what}={path} is a checkpoint's name; choose another file name.")
    return path


def writable(folder: str | Path) -> Path:
    """Make sure files can be written into `folder`, before any work rather than after."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        # Created afresh (O_EXCL never follows a link): what lies at the name is never written.
        probe.unlink(missing_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        probe.unlink()
    except OSError as error:
        raise OutputError(
            f"cannot write the folder {folder} ({error.strerror or error}); free some space, "
            "fix its permissions, or choose another (hydra.run.dir=<folder>)."
        ) from None
    return folder


# --- links: a folder is data ------------------------------------------------------------------

# A run folder holds tens of files, a sweep folder a few thousand; more, or deeper, is not one.
MAX_ENTRIES = 100_000
MAX_DEPTH = 16


class FileRefused(UserError):
    """A folder or a file read back that is not what this project writes."""


def refuse_links(folder: str | Path, what: str) -> None:
    """Refuse, in one line, a folder in which anything is a symlink, a file with more than one
    hard link, or not a file or folder, or which holds more than MAX_ENTRIES entries or is deeper
    than MAX_DEPTH: writing into it could follow a link out of it. `what` names the setting that
    chose it (resume, hydra.run.dir). A folder that does not exist yet is fine."""
    folder = Path(folder)
    fix = (
        f"{what}={folder}: a run's folder must hold only its own files; copy the run without "
        "links (cp -rL) or choose another folder"
    )
    entries, stack = 0, [(folder, 0)]
    try:
        while stack:
            path, depth = stack.pop()
            with os.scandir(path) as found:
                for entry in found:
                    entries += 1
                    if entries > MAX_ENTRIES or depth >= MAX_DEPTH:
                        raise FileRefused(
                            f"{what}={folder}: more than {MAX_ENTRIES:,} entries or "
                            f"{MAX_DEPTH} levels deep; not a run folder. Choose another folder."
                        )
                    info = entry.stat(follow_symlinks=False)
                    inside = Path(entry.path).relative_to(folder)
                    if stat.S_ISLNK(info.st_mode):
                        raise FileRefused(f"{inside} is a symbolic link. {fix}")
                    if stat.S_ISDIR(info.st_mode):
                        stack.append((Path(entry.path), depth + 1))
                    elif not stat.S_ISREG(info.st_mode):
                        raise FileRefused(f"{inside} is not a file or folder. {fix}")
                    elif info.st_nlink > 1:
                        raise FileRefused(
                            f"{inside} is a hard link (one of {info.st_nlink}). {fix}"
                        )
    except FileNotFoundError:
        if path != folder:
            raise
    except OSError as error:
        raise FileRefused(f"{what}={folder} cannot be read ({first_line(error)})") from None


# --- files read back -----------------------------------------------------------------------------

MAX_FILE_BYTES = 4_000_000  # run_config.yaml, metrics.json and the like are a few kB
MAX_DEPTH_IN_FILE = 32  # levels of nesting in a YAML or JSON file


def read_bytes(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `limit` of them; a link in its place is refused
    (O_NOFOLLOW). Any failure is FileRefused."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise FileRefused(f"{path} cannot be read ({_reason(error)})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path} is not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"{path} is {info.st_size:,} bytes; at most {limit:,} are read")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"{path} is over {limit:,} bytes; at most {limit:,} are read")
    return data


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno == errno.ELOOP:  # O_NOFOLLOW met a link
        return "it is a symbolic link"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {first_line(error)}"[:200]


def read_text(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileRefused(f"{path} is not UTF-8 text (byte {error.start})") from None


class _NoAliases(yaml.SafeLoader):
    """YAML as data: no aliases (their expansion can grow without bound), bounded nesting."""

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML's hook
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in this file")
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_DEPTH_IN_FILE:
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH_IN_FILE} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: str | Path, limit: int = MAX_FILE_BYTES) -> Any:
    """A YAML file as plain data (safe, no aliases, bounded size and depth), or FileRefused."""
    text = read_text(path, limit)
    try:
        return yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader
    except Exception as error:  # noqa: BLE001 - any failure of a file read back is the file's
        raise FileRefused(f"{path} is not readable YAML ({_reason(error)})") from None


def read_json(path: str | Path, limit: int = MAX_FILE_BYTES) -> Any:
    """A JSON file as plain data (bounded size and depth), or FileRefused."""
    text = read_text(path, limit)
    try:
        data = json.loads(text)
        _check_depth(data, MAX_DEPTH_IN_FILE)
        return data
    except Exception as error:  # noqa: BLE001 - any failure of a file read back is the file's
        raise FileRefused(f"{path} is not readable JSON ({_reason(error)})") from None


def _check_depth(data: Any, depth: int) -> None:
    if depth < 0:
        raise ValueError(f"nested more than {MAX_DEPTH_IN_FILE} levels")
    children = data.values() if isinstance(data, dict) else data if isinstance(data, list) else ()
    for child in children:
        _check_depth(child, depth - 1)


def read_csv_rows(path: str | Path, limit: int = 64_000_000) -> list[dict[str, str]]:
    """A CSV log's whole rows: a last row cut short by a kill (no line end), or any row of the
    wrong length, is left out."""
    text = read_text(path, limit)
    if not text.endswith("\n"):
        text = text.rpartition("\n")[0]
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, [])
        return [dict(zip(header, row, strict=True)) for row in reader if len(row) == len(header)]
    except Exception as error:  # noqa: BLE001 - see read_yaml
        raise FileRefused(f"{path} is not a readable CSV log ({_reason(error)})") from None


# --- a run's record ----------------------------------------------------------------------------

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
    except FileRefused as error:
        raise FileRefused(f"{error}; {redo}.") from None
    if not isinstance(loaded, dict) or loaded.get("format") != RECORD_FORMAT:
        raise FileRefused(
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
        raise FileRefused(f"{path}: {problems[0]}; refusing to resume from it.")
    return record


def check_resume(folder: Path, overrides: list[str], output_dir: Path | None = None) -> RunRecord:
    """Whether `resume=<folder>` with these overrides may continue the run there, before anything
    is written: no links in the folder, a readable record, no override that would change the
    run, and the same classes of your own and removed parts as when it started; the command's
    output folder (hydra.run.dir), if given, must be the run's. Returns the record; raises
    FileRefused or ConfigError (one line)."""
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
    refuse_links(folder, "resume")
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
