"""Hydra's Optuna sweeper, made to resume: the same command continues an interrupted search.

The plugin already reloads a stored study (`load_if_exists`), but it would then run `n_trials`
more and number the new jobs from 0 again, over the old job folders. This subclass counts the
trials the study already finished and asks the plugin for only the rest (its constructor's own
`n_trials`), numbers new jobs after the old ones, and marks trials left RUNNING by a killed
search as failed (they are run again). A damaged study database stops the search in one line.
When every trial failed, the plugin's request for the best trial raises; this ends the search
with a message instead, so the sweep summary (which lists each job's failure) is still written.

Import-light on purpose, like mnist_lightning/hydra_callbacks.py: Hydra imports every plugin when
any command starts, so Optuna is imported only when a search runs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optional `sweep` extra is not installed: nothing to offer
    OptunaSweeper = None

from mnist_lightning.errors import first_line  # imports nothing: the plugin stays light

log = logging.getLogger(__name__)
INTERRUPTED = "interrupted_trials"  # the study's record of the trials a killed search left


def _study_file(storage: str) -> Path | None:
    return Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") else None


def _open_study(storage: str, study_name: str):
    """The stored study, or None for a new search. A database that is damaged, or not one at
    all, stops the search in one line before any job starts."""
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return None
    except Exception as error:  # noqa: BLE001 - a study file is data: any failure is its own
        _refuse(storage, error)


def _refuse(storage: str, error: BaseException) -> None:
    """A study that cannot be read or continued: one line, exit code 1."""
    reason = f"{type(error).__name__}: {first_line(error)[:200]}"
    print(
        f"error: {storage} is not a readable Optuna study, or not one of this search ({reason}); "
        "move the file away to start the search afresh, or give the search another folder "
        "(hydra.sweep.dir=<folder>).",
        flush=True,
    )
    sys.exit(1)


def stored_study(storage: str, study_name: str, n_trials: int) -> tuple[Any, int]:
    """The study door: the stored study (None for a new search) and the trials still to run.
    Whatever is wrong in the stored study, one line and exit code 1."""
    study = _open_study(storage, study_name)
    if study is None:
        return None, n_trials
    try:
        return study, _trials_to_go(study, n_trials)
    except Exception as error:  # noqa: BLE001 - see _open_study
        _refuse(storage, error)


def _trials_to_go(study, n_trials: int) -> int:
    """Fail the trials a killed search left RUNNING (remembered, so they are run again and never
    counted as finished); the trials still to run."""
    from optuna.trial import TrialState

    kept = study.user_attrs.get(INTERRUPTED, [])  # (data: only its whole numbers count)
    interrupted = {n for n in kept if type(n) is int} if isinstance(kept, list) else set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        interrupted.add(trial.number)
    study.set_user_attr(INTERRUPTED, sorted(interrupted))
    # A trial that ran to its end counts, even a failed one; an interrupted one does not.
    finished = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.number not in interrupted)
    ]
    return max(0, n_trials - len(finished))


if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        def __init__(self, **settings: Any) -> None:  # as Hydra builds it: by keyword
            storage, study_name = settings.get("storage"), settings.get("study_name")
            self.study_name, self.first_job = study_name, 0
            self.storage = str(storage) if storage else None
            if self.storage and study_name:
                study_file = _study_file(self.storage)
                if study_file is not None:  # the sweep folder: Hydra makes it when jobs start
                    study_file.parent.mkdir(parents=True, exist_ok=True)
                study, remaining = stored_study(self.storage, study_name, settings["n_trials"])
                if study is not None:
                    log.info(
                        "Resuming study %r: %d of %d trials finished, %d to go",
                        study_name,
                        settings["n_trials"] - remaining,
                        settings["n_trials"],
                        remaining,
                    )
                    settings["n_trials"] = remaining
                    self.first_job = len(study.get_trials(deepcopy=False))
                    sampler = settings.get("sampler")
                    if self.first_job and hasattr(sampler, "reseed_rng"):
                        # A seeded sampler would otherwise replay the first run's start-up trials.
                        sampler.reseed_rng()
            super().__init__(**settings)

        def setup(self, **kwargs: Any) -> None:
            super().setup(**kwargs)
            self._number_jobs_from(self.first_job)

        def _number_jobs_from(self, first: int) -> None:
            """New job folders after the old ones. The plugin has no public way to say where
            numbering starts: its implementation counts jobs in `job_idx`, which it sets to 0 in
            setup and hands to the launcher. Kept to this one place; the Optuna resume test fails
            if it stops working (its old job folders would be overwritten)."""
            self.sweeper.job_idx = first

        def sweep(self, arguments: list[str]) -> None:
            try:
                return super().sweep(arguments)
            except ValueError as error:  # optuna: no best trial ("Record does not exist")
                if not self.storage:
                    raise
                if self._any_trial_complete():
                    _refuse(self.storage, error)
                log.error(
                    "No trial of study %r completed: every job failed. Each job folder holds "
                    "its failure.json; the sweep summary lists them.",
                    self.study_name,
                )
            except Exception as error:  # noqa: BLE001 - a stored study edited by hand, say
                if not self.storage:
                    raise
                _refuse(self.storage, error)

        def _any_trial_complete(self) -> bool:
            from optuna.trial import TrialState

            study = _open_study(self.storage, self.study_name)
            trials = study.get_trials(deepcopy=False) if study else []
            return any(t.state == TrialState.COMPLETE for t in trials)
