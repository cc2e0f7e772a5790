"""The `python -m mnist_lightning.train` entry point."""

from __future__ import annotations

import json

from mnist_lightning.train import train
from tests.conftest import FAST, compose, run_module


def test_train_command_writes_a_complete_run_folder(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_module(
        "mnist_lightning.train",
        *FAST,
        "trainer.max_epochs=2",
        "optimizer=adam",
        "model.activation=relu",
        f"hydra.run.dir={run_dir}",
        data_dir=fixture_data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in (
        "test/acc",
        "test/loss",
        "val/acc",
        "val/loss",
        "val/acc_best",
        "train/loss",
        "train/acc",
    ):
        assert name in metrics
    assert (
        0.0 <= metrics["test/acc"] <= 1.0 and metrics["epochs"] == 2 and metrics["fit_seconds"] > 0
    )
    assert metrics["val/acc_best"] >= metrics["val/acc"] - 1e-9
    assert metrics["test/acc"] > 0.5  # the fixture's digits are learnable: far above chance
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("epoch=") for p in (run_dir / "checkpoints").iterdir())
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "samples.png").stat().st_size > 1000
    assert "name: adam" in (run_dir / ".hydra" / "config.yaml").read_text()
    log = result.stdout + result.stderr
    assert "one batch: x [64, 1, 28, 28] float32, y [64] int64" in log
    summary = result.stdout.strip().splitlines()[-1]  # the last line a user sees
    assert summary.startswith("test/acc") and str(run_dir) in summary


def test_an_unknown_option_lists_the_valid_choices(fixture_data_dir):
    result = run_module("mnist_lightning.train", "optimizer=adamm", data_dir=fixture_data_dir)
    assert result.returncode != 0
    assert "Available options in 'optimizer'" in result.stderr
    for choice in ("adam", "adamw", "sgd", "momentum"):
        assert f"\t{choice}\n" in result.stderr


def test_the_same_seed_gives_the_same_metrics(fixture_data_dir, tmp_path):
    overrides = [f"data.data_dir={fixture_data_dir}", *FAST, "trainer.max_epochs=2", "logger=none"]
    first = train(compose(overrides, tmp_path / "a"))
    second = train(compose(overrides, tmp_path / "b"))
    other = train(compose([*overrides, "seed=7"], tmp_path / "c"))
    keys = ("train/loss", "val/loss", "test/loss", "test/acc")
    assert [first[k] for k in keys] == [second[k] for k in keys]
    assert first["train/loss"] != other["train/loss"]


def test_one_epoch_on_real_mnist_reaches_90_percent(real_data_dir, tmp_path):
    metrics = train(
        compose([f"data.data_dir={real_data_dir}", "trainer.max_epochs=1", "logger=none"], tmp_path)
    )
    assert metrics["val/acc"] >= 0.90
    assert metrics["test/acc"] >= 0.90


def test_import_objects_stay_frozen_for_the_exit_but_not_past_a_sweep_job(monkeypatch):
    import gc

    from mnist_lightning import command as runtime

    try:
        monkeypatch.setattr(runtime, "in_multirun", lambda: False)
        with runtime.imported_objects_frozen():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0  # a single run keeps it: the exit skips them
        monkeypatch.setattr(runtime, "in_multirun", lambda: True)
        with runtime.imported_objects_frozen():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0  # the next job's collections may free them
    finally:
        gc.unfreeze()
