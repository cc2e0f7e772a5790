"""Where a search's study lives, and opening it: a database URL, a journal file, or memory.
Whatever is wrong with the study or its server, one line and exit code 1 (`refuse`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import optuna

from mnist_lightning.errors import first_line


def shown(setting: str) -> str:
    """The storage as a message shows it: a database URL without its password."""
    if "://" not in setting:
        return setting
    from sqlalchemy.engine import make_url  # Optuna's RDB storage is SQLAlchemy's

    try:
        return make_url(setting).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: shown as given
        return setting


def refuse(setting: str | None, error: BaseException) -> None:
    """A study that cannot be read or continued: one line, exit code 1."""
    where = shown(setting) if setting else "the in-memory study"
    text = first_line(error)
    reason = f"{type(error).__name__}: {text[:200]}"
    if "optuna storage upgrade" in text:  # a study of an earlier Optuna, as this project made
        line = (
            f"{where} was written by an earlier Optuna; upgrade it with `optuna storage upgrade "
            f"--storage {where}`, or move it away to start the search afresh."
        )
    elif setting and "://" in setting and not setting.startswith("sqlite:"):
        line = (
            f"cannot open the Optuna study at {where} ({reason}); check that the database "
            "server runs and that the URL, user and password are right."
        )
    else:
        line = (
            f"{where} is not a readable Optuna study, or not one of this search ({reason}); "
            "move the file away to start the search afresh, or give the search another folder "
            "(hydra.sweep.dir=<folder>) or storage (hydra.sweeper.storage=...)."
        )
    print(f"error: {line}", flush=True)
    sys.exit(1)


def storage_of(setting: str | None) -> Any:
    """A database URL (`sqlite:///<file>`, `postgresql+psycopg://...`) is Optuna's RDB storage;
    any other setting is the path of a journal file, for workers on a shared filesystem; none
    is a study in memory, for this process only."""
    if not setting:
        return None
    if "://" not in setting:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(setting).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(setting))
    engine: dict[str, Any] = {}
    if setting.startswith("sqlite:///"):
        Path(setting.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Workers of one machine wait their turn to write; SQLite's default is 5 s.
        engine = {"connect_args": {"timeout": 60}}
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(setting, engine_kwargs=engine)
        except (IntegrityError, ProgrammingError):
            # Workers that start at once on a new database all create Optuna's tables; all but
            # one find them made (PostgreSQL: a duplicate key or an existing relation).
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def open_study(setting: str | None, name: str, direction: str, sampler: Any) -> tuple[Any, bool]:
    """The study, and whether it was there before (another worker's, or an earlier search's)."""
    storage = storage_of(setting)
    if storage is not None:
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:  # no such study yet
            pass
        else:
            if study.direction.name.lower() != direction.lower():
                raise ValueError(f"the study is to {study.direction.name.lower()}")
            return study, True
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, direction=direction
        )
        return study, False
    except optuna.exceptions.DuplicatedStudyError:  # another worker made it just now
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler), True
