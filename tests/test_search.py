"""The Optuna search (hparams_search=optuna): one study that the same command resumes, shared
by workers in several processes, on SQLite, a journal file and a real PostgreSQL server that
these tests start."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tests.conftest import FAST, ROOT, free_port, gone_pid, hydra_quoted, run_module
from tests.test_sweeps import summary_rows

# Settings that cannot diverge: these tests are about the study, not about failed trials.
STEADY = (
    'hydra.sweeper.params={optimizer:"choice(sgd)",optimizer.lr:"interval(0.01, 0.1)",'
    'model.activation:"choice(relu, sigmoid)",data.batch_size:"choice(64)"}'
)


def _optuna_trials(sweep_dir: Path):
    import optuna

    study = optuna.load_study(study_name="mnist", storage=f"sqlite:///{sweep_dir}/optuna.db")
    return study.get_trials(deepcopy=False)


def _job_failures(sweep_dir: Path) -> str:
    """Every job's failure.json, for an assertion's message."""
    return "\n".join(p.read_text() for p in sorted(sweep_dir.glob("*/failure.json")))


def test_optuna_search_resumes_an_interrupted_study(fixture_data_dir, tmp_path):
    sweep_dir = tmp_path / "optuna"
    command = [
        sys.executable,
        "-m",
        "mnist_lightning.train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        # Only settings that cannot diverge: this test is about resuming, not failed trials.
        'hydra.sweeper.params={optimizer:"choice(sgd)",optimizer.lr:"interval(0.01, 0.1)",'
        'model.activation:"choice(relu, sigmoid)",data.batch_size:"choice(64)"}',
        *FAST,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "MNIST_DATA_DIR": str(fixture_data_dir)}
    # Start the search and kill it while its second trial runs.
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while (
        not (sweep_dir / "1" / ".hydra").exists()
        and time.time() < deadline
        and process.poll() is None
    ):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (sweep_dir / "optuna.db").is_file()
    states = sorted(t.state.name for t in _optuna_trials(sweep_dir))
    assert states == ["COMPLETE", "RUNNING"]  # as a killed search leaves it

    # The same command again: it continues the study and runs only what is left.
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 2 trials finished, 1 to go" in result.stdout + result.stderr
    trials = _optuna_trials(sweep_dir)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2, _job_failures(sweep_dir)
    assert sorted(t.state.name for t in trials) == [
        "COMPLETE",
        "COMPLETE",
        "FAIL",
    ]  # the killed one
    job_dirs = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert len(job_dirs) == len(set(job_dirs)) >= 2  # the old job folder was not overwritten
    assert json.loads((sweep_dir / "0" / "metrics.json").read_text())  # still there
    assert sum(r["status"] == "ok" for r in summary_rows(sweep_dir)) == 2


def test_a_diverging_trial_is_recorded_and_the_search_goes_on_one_submitit_job_a_trial(
    fixture_data_dir, tmp_path
):
    """A job that fails (here it diverges) is a FAIL trial that says why; the others still run
    and the best trial is reported. Through submitit, as on SLURM: one job a trial, in a process
    of its own, both trials at once."""
    sweep_dir = tmp_path / "search"
    result = run_module(
        "mnist_lightning.train",
        "hparams_search=optuna",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        'hydra.sweeper.params={optimizer:"choice(sgd)",optimizer.lr:"choice(0.05, 10000)"}',
        "seed=6",  # the seeded sampler draws each learning rate once in its first two trials
        *FAST,
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep_dir}",
        data_dir=fixture_data_dir,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    trials = _optuna_trials(sweep_dir)
    states = {(t.params["optimizer.lr"], t.state.name) for t in trials}
    assert states == {(0.05, "COMPLETE"), (10000, "FAIL")}, _job_failures(sweep_dir)
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.user_attrs["failure"].startswith("training stopped in epoch 1")
    assert "Best value:" in result.stdout + result.stderr
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] == 0.05
    rows = {r["job"]: r["status"] for r in summary_rows(sweep_dir)}
    assert rows[str(failed.number)].startswith("failed: training stopped in epoch 1")
    assert [s for s in rows.values() if s == "ok"] == ["ok"]
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2  # two processes


class FailedJob:
    """What a launcher returns for a job that raised (Hydra's JobReturn, as the search reads it)."""

    def __init__(self, job_dir: Path) -> None:
        self.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})

    @property
    def return_value(self):
        raise RuntimeError("this job failed")


def test_a_worker_asks_for_no_more_trials_past_max_failure_rate(tmp_path, caplog):
    import optuna

    from mnist_lightning.search.study import run_search

    def launch(jobs, first):
        return [FailedJob(tmp_path / str(n)) for n in range(first, first + len(jobs))]

    study = optuna.create_study(study_name="mnist", direction="maximize")
    run_search(study, {}, [], launch, n_trials=6, n_jobs=2, max_failure_rate=0.5)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # one round of two
    assert "2 of this worker's 2 trials failed, more than max_failure_rate=0.5" in caplog.text
    run_search(study, {}, [], launch, n_trials=6, n_jobs=2, max_failure_rate=1.0)
    assert len(study.trials) == 6  # a rate of 1 never stops the search


def test_a_search_in_which_every_trial_failed_says_so_and_exits_1(tmp_path, capsys, caplog):
    import optuna

    from mnist_lightning.hydra_callbacks import SweepSummary
    from mnist_lightning.search.space import search_space
    from mnist_lightning.search.study import RESULTS, run_search, write_results

    space, fixed = search_space(["model.activation=choice(relu, tanh)", "trainer.max_epochs=1"])
    study = optuna.create_study(study_name="mnist", direction="maximize")
    launched = []

    def launch(jobs, first):
        launched.extend(jobs)
        for number, overrides in enumerate(jobs, first):
            (tmp_path / str(number) / ".hydra").mkdir(parents=True)
            (tmp_path / str(number) / ".hydra" / "overrides.yaml").write_text(
                yaml.safe_dump(overrides)
            )
        return [FailedJob(tmp_path / str(n)) for n in range(first, first + len(jobs))]

    run_search(study, space, fixed, launch, n_trials=2)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["failure"] == "this job failed" for t in study.trials)
    assert all(job[0] == "trainer.max_epochs=1" and len(job) == 2 for job in launched)
    write_results(study, str(tmp_path))
    assert "No trial of study 'mnist' completed: every job failed" in caplog.text
    assert not (tmp_path / RESULTS).exists()
    # The sweep summary is still written, and the command ends with exit code 1.
    with pytest.raises(SystemExit) as stop:
        SweepSummary().on_multirun_end(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        )
    assert stop.value.code == 1 and "error: no job of the sweep in" in capsys.readouterr().out
    assert all(r["status"].startswith("failed:") for r in summary_rows(tmp_path))


# --- many workers on one study ---------------------------------------------------------------


def _postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs: Debian keeps them off PATH."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    assert installed, "PostgreSQL is not installed: apt-get install postgresql (.ci/run does)"
    return installed[-1].parent


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own on 127.0.0.1, started for these tests and stopped after.
    The server refuses to run as root, so under root it runs as Debian's `postgres` user."""
    bin_dir = _postgres_bin()
    user = "postgres" if os.geteuid() == 0 else None
    home = Path(tempfile.mkdtemp(prefix="mnist-postgres-"))
    if user:
        os.chown(home, pwd.getpwnam(user).pw_uid, -1)
    port = free_port()
    data = home / "data"

    def run(*command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, user=user, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "optuna", "--auth=trust", "--no-sync")
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(home / "log"),
        "-o",
        options,
        "-w",
        "start",
    )
    try:
        yield f"postgresql+psycopg://optuna@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_workers_in_two_processes_share_one_study(storage, request, fixture_data_dir, tmp_path):
    """The same command in two processes at once: n_trials completed in all, each trial one
    job folder, no trial run twice, and the summary over both workers' jobs."""
    import optuna
    from optuna.trial import TrialState

    from mnist_lightning.search.storage import storage_of
    from mnist_lightning.search.study import NOT_RUN, WORKER

    sweep_dir = tmp_path / "search"
    url = (
        str(tmp_path / "study.log")
        if storage == "journal"
        else request.getfixturevalue("postgres_url")
    )
    # The template's test_optuna_sweep (3 trials, fast_dev_run, no logger), in two workers.
    command = [
        sys.executable,
        "-m",
        "mnist_lightning.train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweeper.storage={hydra_quoted(url)}",
        STEADY,
        *FAST,
        "++trainer.fast_dev_run=true",
        "logger=[]",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "MNIST_DATA_DIR": str(fixture_data_dir)}
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=300) == 0, log.read_text()[-3000:]

    trials = optuna.load_study(study_name="mnist", storage=storage_of(url)).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3, [(t.number, t.state.name, t.user_attrs) for t in trials]
    # A trial asked once the other worker had taken the study's last one is never run.
    assert all(
        t.state == TrialState.FAIL and NOT_RUN in t.user_attrs for t in trials if t not in done
    )
    assert {t.user_attrs[WORKER]["pid"] for t in trials} <= {w.pid for w in workers}
    jobs = sorted(int(p.name) for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert jobs == [t.number for t in done]  # one folder a trial, named by its number
    for trial in done:
        job = sweep_dir / str(trial.number)
        assert trial.user_attrs["job"] == str(job)
        ran = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"model.activation={trial.params['model.activation']}" in ran
        metrics = json.loads((job / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val/acc_best"])
    rows = summary_rows(sweep_dir)
    assert sorted(int(r["job"]) for r in rows if r["status"] == "ok") == jobs


def test_a_study_server_that_cannot_be_reached_is_one_line(fixture_data_dir, tmp_path):
    port = free_port()  # closed again: nothing listens there
    url = f"postgresql+psycopg://me:secret@127.0.0.1:{port}/studies"
    result = run_module(
        "mnist_lightning.train",
        "hparams_search=optuna",
        f"hydra.sweeper.storage={hydra_quoted(url)}",
        *FAST,
        f"hydra.sweep.dir={tmp_path / 'search'}",
        data_dir=fixture_data_dir,
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("error: cannot open the Optuna study at postgresql+psycopg://me:***@")
    assert "secret" not in result.stdout + result.stderr


# --- the search space ------------------------------------------------------------------------


def test_the_sweep_syntax_becomes_optunas_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from mnist_lightning.search.space import search_space

    space, fixed = search_space(
        [
            "optimizer=choice(sgd, adam)",
            "optimizer.lr=tag(log, interval(0.0001, 0.5))",
            "model.dropout=interval(0.1, 0.5)",
            "data.batch_size=range(32, 257, 32)",  # Hydra's range stops before 257
            "trainer.max_epochs=3",
            "~callbacks.early_stopping",
            "model.dropout=interval(0, 0.3)",  # a later one replaces the earlier
        ]
    )
    assert space == {
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
        "optimizer.lr": FloatDistribution(0.0001, 0.5, log=True),
        "model.dropout": FloatDistribution(0.0, 0.3),
        "data.batch_size": IntDistribution(32, 256, step=32),
    }
    assert fixed == ["trainer.max_epochs=3", "~callbacks.early_stopping"]


@settings(max_examples=150, deadline=None)
@given(
    value=st.one_of(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20),
        st.integers(-(2**62), 2**62),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
    )
)
def test_a_sampled_value_reads_back_as_itself(value):
    """Whatever a choice held, the trial's override gives its job that very value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mnist_lightning.search.space import as_override

    override = OverridesParser.create().parse_override(as_override("model.x", value))
    assert override.value() == value and type(override.value()) is type(value)


@settings(max_examples=20, deadline=None)
@given(cut=st.integers(0, 10_000), junk=st.binary(max_size=40), at=st.integers(0, 50))
def test_a_damaged_journal_file_is_resumed_or_one_line(tmp_path_factory, cut, junk, at):
    """A journal that a full disk cut short, or a hand edit broke: the study as far as it can
    be read, or one line and exit code 1."""
    import contextlib
    import io

    import optuna

    from mnist_lightning.search.storage import storage_of
    from mnist_lightning.search.study import open_search, progress

    journal = tmp_path_factory.mktemp("journal") / "study.log"
    study = optuna.create_study(
        study_name="mnist", storage=storage_of(str(journal)), direction="maximize"
    )
    study.optimize(lambda trial: trial.suggest_float("optimizer.lr", 0.01, 0.1), n_trials=2)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines.insert(at % (len(lines) + 1), junk + b"\n")
    journal.write_bytes(b"".join(lines)[: len(b"".join(lines)) - cut % 200])
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            study = open_search(str(journal), "mnist", "maximize", None, 3)
        assert " of 3 trials finished" in progress(study, 3)
    except SystemExit as stop:
        shown = out.getvalue().strip().splitlines()
        assert stop.code == 1 and len(shown) == 1, shown
        assert shown[0].startswith(f"error: {journal} is not a readable Optuna study")


def test_a_trial_is_run_again_once_its_worker_is_gone_or_silent(tmp_path):
    """A RUNNING trial is failed (and so run again) at once when its worker was a process of
    this machine that is gone; otherwise once its heartbeat is ten minutes old, so that a
    process number used again by another program cannot hold a trial forever."""
    import time

    import optuna
    from optuna.distributions import FloatDistribution

    from mnist_lightning.search.study import HEARTBEAT, HOST, STALE_AFTER, WORKER, end_interrupted

    study = optuna.create_study(study_name="mnist", direction="maximize")
    now = time.time()
    workers = {
        "beating here": ({"host": HOST, "pid": os.getpid()}, now),
        "silent here": ({"host": HOST, "pid": os.getpid()}, now - 2 * STALE_AFTER),
        "gone here": ({"host": HOST, "pid": gone_pid()}, now),
        "beating elsewhere": ({"host": "elsewhere", "pid": 1}, now - STALE_AFTER / 2),
        "silent elsewhere": ({"host": "elsewhere", "pid": 1}, now - 2 * STALE_AFTER),
    }
    for worker, beat in workers.values():
        trial = study.ask({"optimizer.lr": FloatDistribution(0.01, 0.1)})
        trial.set_user_attr(WORKER, worker)
        trial.set_user_attr(HEARTBEAT, beat)
    end_interrupted(study)
    states = dict(zip(workers, (t.state.name for t in study.trials), strict=True))
    assert states == {
        "beating here": "RUNNING",
        "silent here": "FAIL",
        "gone here": "FAIL",
        "beating elsewhere": "RUNNING",
        "silent elsewhere": "FAIL",
    }
