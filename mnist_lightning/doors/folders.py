"""Run and sweep folders, the folder door's first part: what makes a folder a run's, the lock
a command holds on the folder it writes, where a command may write, and which checkpoint a run
folder given as `ckpt_path` stands for.

A folder that a command will write into is data until it is checked: before anything is
written, a folder in which anything is a link is refused in one line (`refuse_links`,
doors/files.py). The project's own writes replace files by rename (atomic.py) or create them
exclusively, so that they never follow a link. A run's record is read by doors/record.py.
Import-light on purpose: Hydra's launcher process uses it (hydra_callbacks.py) before Hydra
writes anything into a folder.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import socket
import sys
from pathlib import Path, PurePath
from typing import Any

from filelock import FileLock, Timeout

from mnist_lightning.config import RUN_CONFIG
from mnist_lightning.doors.files import FileRefused, read_bytes, read_json
from mnist_lightning.errors import CheckpointError, OutputError
from mnist_lightning.models.metrics import STAGES

LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"  # a run folder's checkpoint folder
LAST = "last.ckpt"
RESULTS = "metrics.json"
METRIC_PREFIXES = tuple(f"{stage}/" for stage in STAGES) + ("val_check/",)


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
    except FileRefused:
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
