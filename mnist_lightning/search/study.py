"""One study, shared by every worker of a search: the same command started in several
processes, on one machine or many, asks the study for its next trial until the study holds
`n_trials`. Each trial's number is its job folder's, so the workers never share a folder, and
the same command started again continues the study.

A trial counts toward `n_trials` once it is asked, unless a killed worker left it running (it
is failed and run again) or another worker took the study's last trial first. Which trials a
worker has is written in the study itself, as each trial's user attributes (also what Optuna's
dashboard shows): the worker's host and process, a heartbeat every minute, and the failure
of a job that failed. A trial left running by a process of this machine that is gone is failed
at once; any other, once its heartbeat is ten minutes old (a process number that another
program has taken since cannot hold a trial forever).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.command import FAILURE as FAILURE_FILE
from mnist_lightning.errors import UserError, first_line
from mnist_lightning.folders import read_json
from mnist_lightning.search.space import as_override
from mnist_lightning.search.storage import open_study, refuse

log = logging.getLogger(__name__)
WORKER, HEARTBEAT, FAILURE, JOB, NOT_RUN = "worker", "heartbeat", "failure", "job", "not_run"
HEARTBEAT_EVERY, STALE_AFTER = 60.0, 600.0
HOST = socket.gethostname()
RESULTS = "optimization_results.yaml"  # the best trial, as hydra-optuna-sweeper wrote it


def open_search(setting: str | None, name: str, direction: str, sampler: Any, n_trials: int) -> Any:
    """The study door: the study that this search continues or starts, with the trials that
    killed workers left running failed. Whatever is wrong with it, one line and exit code 1."""
    try:
        study, existed = open_study(setting, name, direction, sampler)
        end_interrupted(study)
        if existed:
            log.info("Resuming study %r: %s", study.study_name, progress(study, n_trials))
            if sampler is not None:  # a seeded sampler would replay the trials it drew first
                sampler.reseed_rng()
        return study
    except Exception as error:  # noqa: BLE001 - a stored study is data: any failure is its own
        refuse(setting, error)


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # another user's process
        return False
    return False


def worked_on(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial still has a live worker."""
    worker = trial.user_attrs.get(WORKER)
    if isinstance(worker, dict) and worker.get("host") == HOST:
        pid = worker.get("pid")
        if type(pid) is int and pid > 0 and _process_is_gone(pid):
            return False
    beat = trial.user_attrs.get(HEARTBEAT)
    if not isinstance(beat, (int, float)) or isinstance(beat, bool):
        beat = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return time.time() - beat < STALE_AFTER


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward n_trials: finished (a job that failed included) or being
    run. A trial that a killed worker left, or one asked once the study was full, does not."""
    if trial.state == TrialState.FAIL:
        return FAILURE in trial.user_attrs
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def end_interrupted(study: Any) -> None:
    """Fail the trials that a killed worker left running, so that they are run again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worked_on(trial):
            log.info("Trial %d was left running by a stopped worker: it runs again", trial.number)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def progress(study: Any, n_trials: int) -> str:
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    finished = sum(counts(t) for t in trials) - running
    to_go = max(0, n_trials - finished - running)
    others = f", {running} running in other workers" if running else ""
    return f"{finished} of {n_trials} trials finished{others}, {to_go} to go"


def ask(study: Any, space: dict[str, BaseDistribution], n_trials: int) -> Trial | None:
    """The next trial for this worker, or None when the study has all its trials. The storage
    numbers trials in the order they are asked; a trial is this worker's if fewer than n_trials
    counted before it."""
    if sum(counts(t) for t in study.get_trials(deepcopy=False)) >= n_trials:
        return None
    trial = study.ask(space)
    trial.set_user_attr(WORKER, {"host": HOST, "pid": os.getpid()})
    trial.set_user_attr(HEARTBEAT, time.time())
    before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
    if sum(counts(t) for t in before) < n_trials:
        return trial
    trial.set_user_attr(NOT_RUN, f"another worker took the study's last of {n_trials} trials")
    study.tell(trial, state=TrialState.FAIL)
    return None


class Heartbeat:
    """`with Heartbeat(trials):` marks the trials as worked on, every minute, from a thread."""

    def __init__(self, trials: Sequence[Trial]) -> None:
        self.trials, self.stop = trials, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_EVERY):
            for trial in self.trials:
                try:
                    trial.set_user_attr(HEARTBEAT, time.time())
                except Exception as error:  # noqa: BLE001 - a storage hiccup: the next beat
                    log.warning("Heartbeat of trial %d: %s", trial.number, first_line(error))

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _failure(job_dir: Path) -> str:
    """What failure.json says, which the train command writes in a job folder it failed in."""
    try:
        return str(read_json(job_dir / FAILURE_FILE)["message"])
    except (UserError, OSError, KeyError, TypeError):  # no readable reason: the file says more
        return f"the job failed; its folder's {FAILURE_FILE} says why"


def tell(study: Any, trial: Trial, job: Any) -> bool:
    """Tell the study how the trial's job (Hydra's JobReturn) ended; whether it succeeded."""
    job_dir = Path(job.hydra_cfg.hydra.runtime.output_dir)
    trial.set_user_attr(JOB, str(job_dir))
    try:
        value = job.return_value  # raises the job's own exception, if it raised one
        if value is None:
            raise RuntimeError(_failure(job_dir))
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"the job's result is {value}")
    except Exception as error:  # noqa: BLE001 - any failure of a job is that trial's
        trial.set_user_attr(FAILURE, first_line(error)[:300])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("Trial %d failed: %s", trial.number, first_line(error))
        return False
    study.tell(trial, value, skip_if_finished=True)
    return True


def consecutive(trials: list[Trial]) -> list[list[Trial]]:
    """The trials in runs of consecutive numbers: a launcher numbers its jobs from one number up."""
    runs: list[list[Trial]] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def overrides(trial: Trial, fixed: list[str]) -> list[str]:
    return [*fixed, *(as_override(k, v) for k, v in trial.params.items())]


def write_results(study: Any, sweep_dir: str) -> None:
    """The best trial in the log and in optimization_results.yaml; or, when no trial completed,
    a line saying so (the sweep summary, written next, ends the command with exit code 1)."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        log.error(
            "No trial of study %r completed: every job failed. Each job folder holds its "
            "failure.json; the sweep summary lists them.",
            study.study_name,
        )
        return
    best = study.best_trial
    log.info("Best trial: %d", best.number)
    log.info("Best parameters: %s", best.params)
    log.info("Best value: %s", best.value)
    results = {"name": "optuna", "best_trial": best.number, "best_params": best.params}
    results["best_value"] = best.value
    write_text_atomically(Path(sweep_dir) / RESULTS, yaml.safe_dump(results, sort_keys=False))


def run_search(
    study: Any,
    space: dict[str, BaseDistribution],
    fixed: list[str],
    launch: Callable[[list[list[str]], int], list[Any]],
    n_trials: int,
    n_jobs: int = 1,
    max_failure_rate: float = 1.0,
) -> None:
    """Ask, launch `n_jobs` trials at a time, tell, until the study holds n_trials trials.
    open_search failed the trials that killed workers had left; each round fails those left
    since."""
    ran = failed = 0
    while True:
        batch = []
        for _ in range(max(1, n_jobs)):
            trial = ask(study, space, n_trials)
            if trial is None:
                break
            batch.append(trial)
        if not batch:
            return
        with Heartbeat(batch):
            jobs = []
            for run in consecutive(batch):
                jobs += launch([overrides(t, fixed) for t in run], run[0].number)
        for trial, job in zip(batch, jobs, strict=True):
            ran += 1
            failed += not tell(study, trial, job)
        if failed > max_failure_rate * ran:
            log.error(
                "%d of this worker's %d trials failed, more than max_failure_rate=%s allows: "
                "it asks for no more.",
                failed,
                ran,
                max_failure_rate,
            )
            return
        end_interrupted(study)
