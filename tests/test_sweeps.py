"""Experiments, multirun sweeps, the joblib launcher and the sweep summary (the Optuna search:
test_search.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.report import main as report_main
from tests.conftest import FAST, run_module
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
