"""Your own run and sweep folders: what makes a folder a run's, the lock a command holds on the
folder it writes, where a command may write, which checkpoint a run folder stands for, and how
a file this project wrote is read back.

These folders are the user's, like their command line: guarded against accidents, not against
them. Links in them are normal (checkpoints/ on a scratch disk, a `cp -al` snapshot). Two
commands on one folder, however it is reached, meet at one lock; before a command writes into a
folder, any file there that is shared with another folder (a hard link, or a symlink to a file)
becomes the folder's own copy, so that writing in place (Hydra's log, Lightning's hparams.yaml)
never changes the original; everything else is written by rename (atomic.py). A damaged or
hand-edited file is one line that names it. Import-light on purpose: Hydra's launcher process
uses it (hydra_callbacks.py) before Hydra writes anything into a folder.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import yaml
from filelock import FileLock, Timeout

from mnist_lightning.atomic import write_atomically
from mnist_lightning.config import RUN_CONFIG
from mnist_lightning.errors import CheckpointError, OutputError, UserError, first_line
from mnist_lightning.models.metrics import STAGES

LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"  # a run folder's checkpoint folder
LAST = "last.ckpt"
RESULTS = "metrics.json"
METRIC_PREFIXES = tuple(f"{stage}/" for stage in STAGES) + ("val_check/",)


class DamagedFile(UserError):
    """A file of your own folder that is not as this project wrote it (damaged, or edited)."""


def read_own(path: str | Path, parse: Callable[[str], Any]) -> Any:
    """A file this project wrote, parsed by `parse`; any failure, whatever its exception, is one
    DamagedFile line naming the file."""
    try:
        return parse(Path(path).read_text(encoding="utf-8"))
    except Exception as error:  # noqa: BLE001 - a file that cannot be read is the file's fault
        reason = getattr(error, "strerror", None) or f"{type(error).__name__}: {first_line(error)}"
        raise DamagedFile(f"{path} is damaged or was edited by hand ({reason[:200]})") from None


def read_yaml(path: str | Path) -> Any:
    return read_own(path, yaml.safe_load)


def read_json(path: str | Path) -> Any:
    return read_own(path, json.loads)


def shared(path: Path) -> bool:
    """Whether the file at `path` is also another place's: a symlink, or one of hard links."""
    return path.is_symlink() or (path.is_file() and path.stat().st_nlink > 1)


def unshare(folder: Path) -> None:
    """Make every file in `folder` that is shared with another place (a hard link, or a symlink
    to a file) the folder's own copy, by rename, before a command writes into it: a run folder
    copied with `cp -al` or `cp -as` then never changes the original's files. Checkpoints are
    left shared (they are only ever replaced by rename or removed), and so are linked folders
    (checkpoints/ on a scratch disk): they are not walked."""
    for root, _, names in os.walk(folder):  # (os.walk does not follow links to folders)
        for name in names:
            path = Path(root) / name
            if not name.endswith(".ckpt") and path.is_file() and shared(path):
                write_atomically(path, lambda copy, source=path: shutil.copyfile(source, copy))


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
    Added here: the holder's line in the file, the one-line refusal naming it, the file removed
    by its last holder while still held, and the folder's files unshared (`unshare`) once held.
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
        lock_file = self.folder / LOCK_FILE
        if shared(lock_file):
            lock_file.unlink()  # a copy's lock file is its own, not the original folder's
        try:
            self.lock.acquire()
        except Timeout:
            try:
                holder = lock_file.read_text(errors="replace")[:500].strip()
            except OSError:
                holder = ""
            raise OutputError(
                f"{self.folder} is in use by {holder or 'another process'}; wait for that run to "
                "end or stop it, or choose another folder (hydra.run.dir=<folder>)."
            ) from None
        FolderLock._holds[self.folder] = FolderLock._holds.get(self.folder, 0) + 1
        try:
            unshare(self.folder)
        except UserError:
            self.__exit__()
            raise
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
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise OutputError(
            f"cannot write the folder {folder} ({error.strerror or error}); free some space, "
            "fix its permissions, or choose another (hydra.run.dir=<folder>)."
        ) from None
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A `.ckpt` file as given, or a run folder's tested checkpoint: the one its metrics.json
    names (a file name, looked up in the folder's checkpoints/), else its only best checkpoint,
    else its last.ckpt."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a .ckpt file or a run folder (outputs/runs/<time>)"
        )
    folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    tested = tested_checkpoint_name(path)
    if tested and (folder / tested).is_file():
        return folder / tested
    best = sorted(p for p in folder.glob("*.ckpt") if p.name != LAST)
    if len(best) == 1:
        return best[0]
    if (folder / LAST).is_file() and not best:
        return folder / LAST
    if best:
        raise CheckpointError(
            f"{path} holds {len(best)} checkpoints and no metrics.json naming the tested one; "
            "pass one .ckpt file"
        )
    raise CheckpointError(
        f"{path} holds no checkpoint (*.ckpt); pass a .ckpt file or a run folder of a finished run"
    )


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's results (metrics.json), or None when there are none or they are not
    whole: an object whose metrics (`val/acc_best`, `test/acc`, ...) are finite numbers or null,
    as the train command writes it (a sweeper takes one of them as the run's result)."""
    try:
        results = read_json(run_dir / RESULTS)
    except DamagedFile:
        return None
    if not isinstance(results, dict):
        return None
    for key, value in results.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if (
            key.startswith(METRIC_PREFIXES)
            and value is not None
            and not (number and math.isfinite(value))
        ):
            return None
    return results


def tested_checkpoint_name(run_dir: Path) -> str | None:
    """The file name of the checkpoint a finished run tested, from its metrics.json (data: only
    a plain file name is taken, never a path)."""
    results = read_results(run_dir) or {}
    name = results.get("test_checkpoint")
    if not isinstance(name, str):
        return None
    name = PurePath(name).name  # earlier versions wrote the whole path
    return name if re.fullmatch(r"[\w.=\-]+\.ckpt", name) else None
