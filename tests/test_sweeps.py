"""Experiments, multirun sweeps, the optuna search, the joblib launcher and the sweep summary."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.report import main as report_main
from tests.conftest import FAST, ROOT, run_module
from tests.test_tracking import check_mlflow_runs, mlflow_overrides

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def compose_full(overrides: list[str]):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    from mnist_lightning.training.check import check

    cfg = compose_full([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    check(cfg)
    assert cfg.trainer.max_epochs >= 10 and cfg.data.batch_size in (64, 128)


def test_the_best_experiment_keeps_the_lessons_network():
    cfg = compose_full(["experiment=best"])
    assert cfg.model._target_ == "mnist_lightning.models.classifier.MNISTClassifier"
    assert cfg.augment.elastic_alpha > 0 and cfg.model.label_smoothing > 0
    assert cfg.callbacks.weight_averaging._target_.endswith(".EMAWeightAveraging")


def test_the_lesson_experiment_is_the_lesson():
    cfg = compose_full(["experiment=lesson"])
    assert (cfg.model.activation, cfg.optimizer.name, cfg.optimizer.lr) == ("sigmoid", "sgd", 0.2)
    assert cfg.optimizer.momentum == 0.0 and not cfg.scheduler
    assert cfg.data.normalize is False and cfg.data.shuffle is False


def test_relu_adam_changes_only_the_activation_and_optimizer():
    base, cfg = compose_full([]), compose_full(["experiment=relu_adam"])
    assert cfg.model.activation == "relu" and cfg.optimizer.name == "adam"
    assert cfg.data == base.data and cfg.trainer == base.trainer


@pytest.mark.parametrize(
    "preset, key, values",
    [
        ("optimizers", "optimizer", "sgd,momentum,adam,adamw,rmsprop,adagrad,adadelta"),
        (
            "activations",
            "model.activation",
            "sigmoid,relu,tanh,leaky_relu,prelu,rrelu,elu,gelu,silu,maxout",
        ),
    ],
)
def test_sweep_presets_are_multiruns_over_the_lessons_lists(preset, key, values):
    cfg = compose_full([f"sweep={preset}"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params[key] == values


def test_a_multirun_writes_job_folders_and_a_summary_with_failed_jobs_as_rows(
    fixture_data_dir, tmp_path
):
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "mnist_lightning.train",
        "-m",
        "hydra/launcher=joblib",  # two jobs at a time, in worker processes
        "hydra.launcher.n_jobs=2",
        "optimizer=sgd,adam",
        "model.activation=relu,not_an_activation",
        *mlflow_overrides(tmp_path / "store"),  # jobs at once, one MLflow store (test_tracking)
        *FAST,
        f"hydra.sweep.dir={sweep_dir}",
        data_dir=fixture_data_dir,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    check_mlflow_runs(tmp_path / "store", sweep_dir)
    rows = summary_rows(sweep_dir)
    assert sorted(r["overrides"] for r in rows) == [
        "optimizer=adam model.activation=not_an_activation",
        "optimizer=adam model.activation=relu",
        "optimizer=sgd model.activation=not_an_activation",
        "optimizer=sgd model.activation=relu",
    ]
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["overrides"].split()[1] for r in ok] == ["model.activation=relu"] * 2
    assert float(ok[0]["val/acc_best"]) >= float(ok[1]["val/acc_best"])  # best first
    for row in ok:
        metrics = json.loads((sweep_dir / row["job"] / "metrics.json").read_text())
        assert float(row["test/acc"]) == pytest.approx(metrics["test/acc"], abs=1e-4)
        assert row["seconds"] == f"{metrics['fit_seconds']:.2f}"  # as kept, not to 4 places
    failed = [r for r in rows if r["status"] != "ok"]
    assert rows[-2:] == failed  # failed jobs last
    assert all(
        r["status"].startswith("failed: model.activation=not_an_activation: must be one of")
        and r["test/acc"] == ""
        for r in failed
    )
    assert (sweep_dir / "summary.png").stat().st_size > 10_000
    # A sweep over model.activation draws each activation's gradient flow side by side.
    assert (sweep_dir / "gradient_flow.png").stat().st_size > 10_000
    assert "| optimizer=adam model.activation=relu |" in (sweep_dir / "summary.md").read_text()
    assert "optimizer=adam model.activation=relu" in result.stdout  # the table is printed too

    # A job killed before it wrote anything, then the report rebuilt by hand.
    (sweep_dir / ok[0]["job"] / "metrics.json").unlink()
    (sweep_dir / "summary.csv").unlink()
    assert report_main([str(sweep_dir)]) == 0
    statuses = [r["status"] for r in summary_rows(sweep_dir)]
    assert sum(s.startswith("failed: no metrics.json") for s in statuses) == 1
    assert sum(s == "ok" for s in statuses) == 1


def test_default_sweep_folders_never_collide():
    # Two sweeps (or runs) started in the same second still get folders of their own.
    raw = (Path(CONFIG_DIR) / "train.yaml").read_text()
    assert (
        "multirun/${now:%Y-%m-%d_%H-%M-%S-%f}" in raw and "runs/${now:%Y-%m-%d_%H-%M-%S-%f}" in raw
    )
    assert "subdir: ${hydra.job.num}" in raw


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


def _optuna_search_over_activations(
    activations: str, n_trials: int, sweep_dir, data_dir, exit_code: int = 0
):
    """The Optuna search with `activations` as the activation's choices; returns the process."""
    result = run_module(
        "mnist_lightning.train",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        f'hydra.sweeper.params={{model.activation:"choice({activations})"}}',
        *FAST,
        f"hydra.sweep.dir={sweep_dir}",
        data_dir=data_dir,
    )
    assert result.returncode == exit_code, result.stderr[-3000:]
    return result


def test_a_failed_optuna_trial_is_recorded_and_the_search_goes_on(fixture_data_dir, tmp_path):
    """A failed job (here an unknown activation) is a FAIL trial; the others still run and the
    best trial is reported. Before, the NaN it returned made study.tell end the search."""
    sweep_dir = tmp_path / "optuna_failed_trial"
    result = _optuna_search_over_activations(
        "relu, not_an_activation", 3, sweep_dir, fixture_data_dir
    )
    trials = _optuna_trials(sweep_dir)
    # The seeded sampler draws both choices among the three trials.
    states = {(t.params["model.activation"], t.state.name) for t in trials}
    assert states == {("relu", "COMPLETE"), ("not_an_activation", "FAIL")}
    assert len(trials) == 3
    assert "Best value:" in result.stdout + result.stderr
    statuses = [r["status"] for r in summary_rows(sweep_dir)]
    assert sum(s == "ok" for s in statuses) == sum(t.state.name == "COMPLETE" for t in trials)

    # When every trial fails there is no best trial: a message, and still the summary.
    all_failed = tmp_path / "optuna_all_failed"
    result = _optuna_search_over_activations(
        "not_an_activation", 1, all_failed, fixture_data_dir, exit_code=1
    )
    assert "No trial of study 'mnist' completed: every job failed" in result.stdout + result.stderr
    assert result.returncode == 1 and "error: no job of the sweep in" in result.stdout
    assert [t.state.name for t in _optuna_trials(all_failed)] == ["FAIL"]
    assert all(r["status"].startswith("failed:") for r in summary_rows(all_failed))


def test_report_refuses_a_folder_without_jobs(tmp_path, caplog):
    for folder, problem in (
        (tmp_path, "holds no Hydra job folders"),
        (tmp_path / "nope", "is not a folder"),
    ):
        with pytest.raises(SystemExit) as exit_code:
            report_main([str(folder)])
        assert exit_code.value.code == 1 and problem in caplog.text


def test_the_gradient_descent_sweep_is_the_lessons_three_kinds_on_one_budget(tmp_path):
    from mnist_lightning.training.check import check

    cfg = compose_full(["sweep=gradient_descent"])
    assert cfg.hydra.sweeper.params["gradient_descent"] == "batch,stochastic,mini_batch"
    sizes = {}
    for kind in ("batch", "stochastic", "mini_batch"):
        job = compose_full(
            ["sweep=gradient_descent", f"gradient_descent={kind}", f"paths.output_dir={tmp_path}"]
        )
        check(job)
        assert job.trainer.max_time == {"minutes": 1} and job.trainer.max_epochs >= 10_000
        assert (job.optimizer.name, job.model.activation) == ("sgd", "sigmoid")  # the lesson's
        sizes[kind] = (job.data.batch_size, job.optimizer.lr)
    assert sizes["batch"][0] >= 55_000 and sizes["stochastic"][0] == 1
    assert sizes["mini_batch"] == (64, 0.2)


def test_the_sweep_summary_shows_validation_against_images_and_seconds(tmp_path):
    from mnist_lightning.report import summary_figure

    def job(name: str, images: list[int], seconds: list[float], accuracy: list[float]) -> dict:
        history = {"val_check/images": images, "val_check/seconds": seconds}
        history["val_check/val/acc"] = accuracy
        return {"overrides": name, "status": "ok", "test/acc": accuracy[-1], "history": history}

    rows = [
        job("gradient_descent=batch", [55_000, 110_000, 165_000], [0.8, 1.6, 2.4], [0.1, 0.2, 0.3]),
        job("gradient_descent=stochastic", [250, 500, 750], [3.0, 6.0, 9.0], [0.8, 0.85, 0.9]),
    ]
    figure = summary_figure(rows)
    by_images, by_seconds, bars = figure.axes
    assert by_images.get_xlabel() == "images trained on" and by_images.get_xscale() == "log"
    assert by_seconds.get_xlabel() == "seconds of training"
    assert [list(line.get_xdata()) for line in by_seconds.lines] == [
        [0.8, 1.6, 2.4],
        [3.0, 6.0, 9.0],
    ]
    assert len(bars.patches) == 2


def test_a_run_with_gradient_flow_draws_its_layers(fixture_data_dir, tmp_path):
    import json

    from mnist_lightning.train import train
    from tests.conftest import compose

    train(
        compose(
            [
                f"data.data_dir={fixture_data_dir}",
                *FAST,
                "gradient_flow=true",
                "trainer.log_every_n_steps=1",
            ],
            tmp_path,
        )
    )
    assert (tmp_path / "gradient_flow.png").stat().st_size > 5_000
    norms = json.loads((tmp_path / "metrics.json").read_text())["gradient_norms"]
    assert set(norms) == {"step", "hidden1.weight", "hidden2.weight", "out.weight"}
    assert norms["step"] == list(range(len(norms["out.weight"])))  # every step of the first epoch
