"""Hydra's Optuna sweeper, made to resume: the same command continues an interrupted search.

The plugin already reloads a stored study (`load_if_exists`), but it would then run
`n_trials` more and number the new jobs from 0 again, over the old job folders. This subclass
counts the trials the study already finished, runs only the rest, numbers new jobs after the
old ones, and marks trials left RUNNING by a killed search as failed (they are run again).
When every trial failed, the plugin's request for the best trial raises; this ends the search
with a message instead, so the sweep summary (which lists each job's failure) is still written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optional `sweep` extra is not installed: nothing to offer
    OptunaSweeper = None

log = logging.getLogger(__name__)

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> None:
            impl = self.sweeper
            # The SQLite file lives in the sweep folder, which Hydra makes only when jobs start.
            Path(impl.sweep_dir).mkdir(parents=True, exist_ok=True)
            if impl.storage and impl.study_name:
                self._check_storage(impl.storage)
                self._continue_study(impl)
            try:
                return super().sweep(arguments)
            except ValueError:  # optuna: no best trial ("Record does not exist")
                if not impl.storage or self._any_trial_complete(impl):
                    raise
                log.error(
                    "No trial of study %r completed: every job failed. Each job folder under %s "
                    "holds its failure.json; the sweep summary lists them.",
                    impl.study_name,
                    impl.sweep_dir,
                )

        @staticmethod
        def _check_storage(storage: str) -> None:
            """A study database that is damaged, or not one at all, stops the search in one line
            before any job starts (it is data: nothing in it is trusted to be a study)."""
            import optuna
            from sqlalchemy.exc import SQLAlchemyError

            try:
                optuna.storages.RDBStorage(storage)
            except (SQLAlchemyError, RuntimeError, ValueError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
                print(
                    f"error: {storage} is not a readable Optuna study ({reason}); move the file "
                    "away to start the search afresh, or give the search another folder "
                    "(hydra.sweep.dir=<folder>).",
                    flush=True,
                )
                sys.exit(1)

        @staticmethod
        def _any_trial_complete(impl) -> bool:
            import optuna
            from optuna.trial import TrialState

            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            return any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))

        @staticmethod
        def _continue_study(impl) -> None:
            import optuna
            from optuna.trial import TrialState

            try:
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            except KeyError:  # no such study yet: a fresh search
                return
            # Trials left RUNNING had their process killed: they fail, and the study remembers
            # them, so that they are run again and never counted as finished.
            interrupted = set(study.user_attrs.get("interrupted_trials", []))
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study.tell(trial.number, state=TrialState.FAIL)
                interrupted.add(trial.number)
            study.set_user_attr("interrupted_trials", sorted(interrupted))
            trials = study.get_trials(deepcopy=False)
            # A trial that ran to its end counts, even a failed one; an interrupted one does not.
            finished = [
                t
                for t in trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and t.number not in interrupted)
            ]
            remaining = max(0, impl.n_trials - len(finished))
            log.info(
                "Resuming study %r: %d of %d trials finished, %d to go",
                impl.study_name,
                len(finished),
                impl.n_trials,
                remaining,
            )
            impl.n_trials = remaining
            if trials and hasattr(impl.sampler, "reseed_rng"):
                # A seeded sampler would otherwise replay the first run's random start-up trials.
                impl.sampler.reseed_rng()
            impl.job_idx = len(trials)  # job folders continue after the existing ones
