"""Folders: what makes a folder a run's, the lock a command holds on the folder it writes, and
where a command may write.

Import-light on purpose: Hydra's launcher process uses it (hydra_callbacks.py) before Hydra
writes anything into a folder.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import socket
import sys
from pathlib import Path

from mnist_lightning.errors import OutputError

LOCK_FILE = ".lock"
RUN_CONFIG = "run_config.yaml"  # a run's record: the file that makes a folder a run folder


class FolderLock:
    """`with FolderLock(folder):` holds an exclusive `flock` on `<folder>/.lock`.

    A flock belongs to the open file, so the operating system drops it when the process exits
    however it exits: a crashed run never leaves a stale lock. Re-entrant within a process (the
    Hydra callback takes it before the job starts, the job takes it again); another process that
    wants it is refused in one line naming the holder.
    """

    _held: dict[Path, list[int]] = {}  # folder -> [file descriptor, depth], this process's locks

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()

    def __enter__(self) -> FolderLock:
        held = FolderLock._held.get(self.folder)
        if held is not None:
            held[1] += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(
                f"{self.folder} is in use by {holder}; wait for that run to end or stop it, "
                "or choose another folder (hydra.run.dir=<folder>)."
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        os.pwrite(
            fd, f"process {os.getpid()} on {socket.gethostname()} ({command[:200]})".encode(), 0
        )
        FolderLock._held[self.folder] = [fd, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        held = FolderLock._held.get(self.folder)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del FolderLock._held[self.folder]
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
            os.close(held[0])  # releases the lock

    @staticmethod
    def release_all() -> None:
        """At exit, however the command ended (sys.exit skips the callbacks' ends): no lock file
        is left behind."""
        for folder, (fd, _) in list(FolderLock._held.items()):
            (folder / LOCK_FILE).unlink(missing_ok=True)
            os.close(fd)
        FolderLock._held.clear()


atexit.register(FolderLock.release_all)


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
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputError(
            f"cannot write the folder {folder} ({error.strerror or error}); free some space, "
            "fix its permissions, or choose another (hydra.run.dir=<folder>)."
        ) from None
    return folder
