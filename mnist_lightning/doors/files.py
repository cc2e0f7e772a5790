"""Files read back, the folder door's second part: every file a command reads back from a
run or sweep folder goes through one reader per kind here, bounded in size, links refused, YAML
without aliases and JSON within a depth; any failure, whatever its exception, is one FileRefused
line naming the file and what to do. `refuse_links` checks a whole folder before anything is
written into it: a folder in which anything is a link (a symlink, or a file with more than one
hard link), or that is larger or deeper than a run's, is refused.
"""

from __future__ import annotations

import csv
import errno
import io
import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from mnist_lightning.errors import UserError, first_line

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
# YAML is parsed in Python (a SafeLoader with hooks): 4 MB took 27-48 s, 64 kB takes under
# a second. A run's record is ~2 kB, a job's overrides.yaml well under 1 kB.
MAX_YAML_BYTES = 64_000
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


def read_yaml(path: str | Path, limit: int = MAX_YAML_BYTES) -> Any:
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


# A run's CSV log: a row per logged step and epoch, a column per metric. Tiny rows or a wide
# header would make 64 MB of text into GBs of Python objects.
MAX_CSV_ROWS = 1_000_000
MAX_CSV_COLUMNS = 1_000


def read_csv_rows(path: str | Path, limit: int = 64_000_000) -> list[dict[str, str]]:
    """A CSV log's whole rows: a last row cut short by a kill (no line end), or any row of the
    wrong length, is left out."""
    text = read_text(path, limit)
    if not text.endswith("\n"):
        text = text.rpartition("\n")[0]
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, [])
        if len(header) > MAX_CSV_COLUMNS:
            raise ValueError(f"{len(header):,} columns; at most {MAX_CSV_COLUMNS:,}")
        rows = list(itertools.islice(reader, MAX_CSV_ROWS + 1))
        if len(rows) > MAX_CSV_ROWS:
            raise ValueError(f"more than {MAX_CSV_ROWS:,} rows")
        return [dict(zip(header, row, strict=True)) for row in rows if len(row) == len(header)]
    except Exception as error:  # noqa: BLE001 - see read_yaml
        raise FileRefused(f"{path} is not a readable CSV log ({_reason(error)})") from None
