"""Exact resume: a run killed (by a real signal) and resumed ends with the figures of the run that
was never stopped, to the last digit: metrics.json, metrics.csv and TensorBoard."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from mnist_lightning.errors import ConfigError
from mnist_lightning.train import train
from tests.conftest import FAST, compose, start_training

TIMED = ("seconds", "training_started_at", "fit_seconds")  # a clock's values, never the same


def figures(run_dir: Path) -> dict:
    """metrics.json without its clock readings."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["history"] = {
        name: values
        for name, values in metrics["history"].items()
        if not any(t in name for t in TIMED)
    }
    return {name: value for name, value in metrics.items() if not any(t in name for t in TIMED)}


def csv_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [
            {k: v for k, v in row.items() if not any(t in k for t in TIMED)}
            for row in csv.DictReader(f)
        ]


def tensorboard_scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if not any(t in tag for t in TIMED)
    }


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared"


def kill_when_saved(args: list[str], data_dir: Path, sig: int, after: float = 0.0) -> int:
    """Start `train args`, and once it saved checkpoints/last.ckpt (and `after` seconds more),
    send it `sig`; the global step the run will resume from."""
    run_dir = Path(
        next(a for a in args if a.startswith(("hydra.run.dir=", "resume="))).split("=")[1]
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = last.stat().st_mtime_ns if last.exists() else None
    process = start_training(args, data_dir)
    deadline = time.time() + 180
    while (not last.exists() or last.stat().st_mtime_ns == saved) and time.time() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.01)
    time.sleep(after)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, "the run ended before the signal: " + output[-2000:]
    assert not (run_dir / "metrics.json").exists()
    return torch.load(last, weights_only=True)["global_step"]


def resumed_in_process(run_dir: Path, data_dir: Path) -> None:
    train(compose([f"resume={run_dir}", f"data.data_dir={data_dir}"], run_dir))


def same_as_never_stopped(run_dir: Path, args: list[str], data_dir: Path, logged) -> None:
    """The finished run in `run_dir` against the same command run whole beside it: the same
    metrics.json and the same rows of its logger (`logged`: csv_rows or tensorboard_scalars)."""
    whole = run_dir.parent / "whole"
    train(compose([f"data.data_dir={data_dir}", *args], whole))
    assert figures(run_dir) == figures(whole)
    assert logged(run_dir) == logged(whole)


def test_killed_twice_mid_epoch_with_elastic_maxout_smoothing_and_accumulation(
    fixture_data_dir, tmp_path
):
    """kill -9 after a step checkpoint (mid-epoch), resumed and killed again, resumed: the same
    figures as the run never stopped, metrics.csv's rows too."""
    args = [
        *FAST,
        "trainer.max_epochs=5",
        "augment=elastic",
        "+augment.elastic_bank=64",
        "model.activation=maxout",
        "model.label_smoothing=0.1",
        "optimizer=adam",
        "+trainer.accumulate_grad_batches=2",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "logger=csv",
        "trainer.log_every_n_steps=2",
    ]
    run_dir = tmp_path / "killed"
    first = kill_when_saved([*args, f"hydra.run.dir={run_dir}"], fixture_data_dir, signal.SIGKILL)
    second = kill_when_saved([f"resume={run_dir}"], fixture_data_dir, signal.SIGKILL)
    assert first < second < 5 * 4  # killed after more steps, before the end
    resumed_in_process(run_dir, fixture_data_dir)
    same_as_never_stopped(run_dir, args, fixture_data_dir, csv_rows)


def test_ctrl_c_during_validation_with_ema_onecycle_cnn_and_val_checks(fixture_data_dir, tmp_path):
    """experiment=best (EMA, one-cycle, elastic + affine, label smoothing, AdamW) on the CNN,
    validating twice an epoch: Ctrl-C while it validates (one image per validation batch, so
    that validation takes most of the time), resumed: the same figures, TensorBoard's too."""
    args = [
        *FAST,
        "experiment=best",
        "trainer.max_epochs=4",
        "data.batch_size=64",
        "data.eval_batch_size=1",
        "+augment.elastic_bank=64",
        "model/net=cnn",
        "+trainer.val_check_interval=4",
        "trainer.log_every_n_steps=3",
    ]
    run_dir = tmp_path / "interrupted"
    kill_when_saved([*args, f"hydra.run.dir={run_dir}"], fixture_data_dir, signal.SIGINT, 0.05)
    resumed_in_process(run_dir, fixture_data_dir)
    same_as_never_stopped(run_dir, args, fixture_data_dir, tensorboard_scalars)


def test_a_onecycle_run_resumed_with_more_epochs_is_one_line(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*FAST, "trainer.max_epochs=2", "scheduler=onecycle", "logger=none"]
    train(compose([f"data.data_dir={fixture_data_dir}", *overrides], run_dir))
    record = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    record["config"]["trainer"]["max_epochs"] = 4  # as a user who edits the record would
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(record))
    (run_dir / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="built for 16 steps and this run now has 32") as error:
        resumed_in_process(run_dir, fixture_data_dir)
    assert "\n" not in str(error.value)
