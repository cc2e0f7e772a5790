"""`hydra/sweeper=optuna`: Hydra's sweeper for an Optuna search, on Optuna's ask-and-tell API.

Written here rather than taken from hydra-optuna-sweeper: its last release (1.3, 2022) requires
optuna < 3, and with it SQLAlchemy < 2, which holds back every library beside it (MLflow's
store, optuna-dashboard). It also runs a search in one process only, where Optuna's way is many
workers on one shared study (mnist_lightning/search/study.py).

The settings are the plugin's (conf/hydra/sweeper/optuna.yaml): a sampler, a direction, the
study's storage and name, n_trials, n_jobs (trials launched at once, for a parallel launcher),
max_failure_rate and params in Hydra's sweep syntax.

Import-light on purpose, like mnist_lightning/hydra_callbacks.py: Hydra imports every plugin when
any command starts, so Optuna is imported only when a search runs.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any = None,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 1.0,
        params: DictConfig | None = None,
    ) -> None:
        self.sampler, self.direction = sampler, str(direction)
        self.storage = str(storage) if storage else None
        self.study_name, self.n_trials, self.n_jobs = study_name, int(n_trials), int(n_jobs)
        self.max_failure_rate = float(max_failure_rate)
        self.params = dict(params or {})

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from mnist_lightning.errors import ConfigError, UserError
        from mnist_lightning.search.space import search_space
        from mnist_lightning.search.storage import refuse, shown
        from mnist_lightning.search.study import open_search, run_search, write_results

        try:
            space, fixed = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        except ConfigError as error:
            print(f"error: {error}", flush=True)
            raise SystemExit(1) from None
        try:
            study = open_search(
                self.storage, self.study_name, self.direction, self.sampler, self.n_trials
            )
            log.info("Study %r in %s", study.study_name, shown(self.storage or "memory"))
            run_search(
                study, space, fixed, self._launch, self.n_trials, self.n_jobs, self.max_failure_rate
            )
            write_results(study, self.config.hydra.sweep.dir)
        except UserError as error:  # optimization_results.yaml on a full disk, say
            print(f"error: {error}", flush=True)
            raise SystemExit(1) from None
        except _LaunchFailed as failed:
            raise failed.__cause__ from None
        except Exception as error:  # noqa: BLE001 - a stored study is data: any failure is its own
            refuse(self.storage, error)

    def _launch(self, jobs: list[list[str]], first_number: int) -> list[Any]:
        """The launcher's jobs, numbered from the first trial's number (its job folder)."""
        try:
            return list(self.launcher.launch(jobs, initial_job_idx=first_number))
        except Exception as error:
            raise _LaunchFailed() from error


class _LaunchFailed(Exception):
    """A launcher's own failure (not a job's): raised as it is, not as the study's."""
