"""Run folders: locked while in use, movable, read as data on resume, resumed whole."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_lightning.errors import CheckpointError, ConfigError, OutputError
from mnist_lightning.folders import FolderLock
from mnist_lightning.train import train
from tests.conftest import FAST, compose, hydra_quoted, run_module, start_training
from tests.test_exact_resume import (
    csv_rows,
    kill_when_saved,
    same_as_never_stopped,
    tensorboard_scalars,
)
from tests.test_tracking import mlflow_overrides, mlflow_runs


@pytest.fixture(autouse=True)
def data_from_the_environment(fixture_data_dir, monkeypatch):
    """A resumed run's data folder is the command's (here $MNIST_DATA_DIR), never its record's."""
    monkeypatch.setenv("MNIST_DATA_DIR", str(fixture_data_dir))


def finished_run(data_dir: Path, run_dir: Path, *overrides: str) -> dict:
    return train(
        compose([f"data.data_dir={data_dir}", *FAST, "trainer.max_epochs=2", *overrides], run_dir)
    )


def unfinished(run_dir: Path, max_epochs: int) -> None:
    """Make a finished run look like one that stopped early: more epochs planned, no results."""
    record = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    record["config"]["trainer"]["max_epochs"] = max_epochs
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(record))
    (run_dir / "metrics.json").unlink()


def resume(run_dir: Path) -> dict:
    return train(compose([f"resume={run_dir}"], run_dir))


@contextmanager
def held_by_another_process(folder: Path):
    """The folder's lock, held by another process for as long as the block runs."""
    script = (
        "import sys, time\n"
        "from mnist_lightning.folders import FolderLock\n"
        "with FolderLock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_naming_the_process(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    finished_run(fixture_data_dir, run_dir)
    unfinished(run_dir, 3)
    record = (run_dir / "run_config.yaml").read_bytes()
    with held_by_another_process(run_dir) as pid, pytest.raises(OutputError) as error:
        resume(run_dir)
    assert f"{run_dir} is in use by process {pid} on " in str(error.value)
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "run_config.yaml").read_bytes() == record
    with FolderLock(run_dir):  # the same process may take it again (a Hydra callback did first)
        assert resume(run_dir)["epochs"] == 3  # free again once the holder let go


def test_a_new_run_never_writes_into_a_folder_that_holds_a_run(fixture_data_dir, tmp_path):
    finished_run(fixture_data_dir, tmp_path)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(
        OutputError, match=f"{tmp_path} already holds a run; continue it with resume="
    ):
        finished_run(fixture_data_dir, tmp_path, "optimizer=adam")
    assert (tmp_path / "metrics.json").read_text() == before


def test_a_moved_run_folder_resumes_where_it_is_now(fixture_data_dir, tmp_path):
    original, moved = tmp_path / "original", tmp_path / "elsewhere" / "moved"
    finished_run(fixture_data_dir, original)
    unfinished(original, 3)
    moved.parent.mkdir()
    shutil.move(original, moved)
    metrics = resume(moved)
    assert not original.exists()  # nothing written to the old place
    assert (
        metrics["epochs"] == 3
        and (moved / metrics["test_checkpoint"]).parent == moved / "checkpoints"
    )
    assert json.loads((moved / "metrics.json").read_text())["global_step"] == 24
    assert len(list((moved / "checkpoints").glob("epoch=*.ckpt"))) == 1


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def command_run(tmp_path_factory, fixture_data_dir) -> Path:
    """A run of 2 epochs made by the train command itself: with Hydra's train.log beside
    Lightning's hparams.yaml."""
    run_dir = tmp_path_factory.mktemp("command") / "run"
    train_command = ("mnist_lightning.train", *FAST, "trainer.max_epochs=2")
    result = run_module(*train_command, f"hydra.run.dir={run_dir}", data_dir=fixture_data_dir)
    assert result.returncode == 0, result.stdout[-2000:]
    return run_dir


@pytest.mark.xdist_group("command_run")  # one worker trains the run both copies start from
@pytest.mark.parametrize("copy", ["cp -al", "cp -as"])
def test_a_run_copied_with_links_resumes_and_leaves_the_original_as_it_was(
    copy, command_run, fixture_data_dir, tmp_path
):
    """A snapshot copy shares the original's files (hard links, as rsync --link-dest and
    rsnapshot make; or symbolic links): resuming the copy writes and deletes none of them, the
    lock file a kill -9 left behind included."""
    original, copied = tmp_path / "original", tmp_path / "copy"
    shutil.copytree(command_run, original)
    unfinished(original, 3)
    (original / ".lock").write_text("process 1 on a host (killed with -9)")
    before = snapshot(original)
    assert "train.log" in before and "hparams.yaml" in before
    subprocess.run([*copy.split(), str(original), str(copied)], check=True)
    resumed = run_module("mnist_lightning.train", f"resume={copied}", data_dir=fixture_data_dir)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert json.loads((copied / "metrics.json").read_text())["epochs"] == 3
    assert snapshot(original) == before and not (original / "metrics.json").exists()
    assert len(list((copied / "checkpoints").glob("epoch=*.ckpt"))) == 1


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, fixture_data_dir) -> Path:
    """A run of 2 epochs whose record asks for 3: what a kill leaves, to be moved, copied or
    linked."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    finished_run(fixture_data_dir, run_dir)
    unfinished(run_dir, 3)
    return run_dir


REACHED = ("moved", "cp -a", "cp -al", "cp -as", "a link to it", "checkpoints/ elsewhere")


@settings(
    deadline=None, max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(how=st.sampled_from(REACHED))
def test_a_run_moved_copied_or_linked_resumes_and_a_copy_leaves_the_original(
    stopped_run, tmp_path, how
):
    """However the folder was moved, copied or linked, `resume=` continues the run where it is
    now; a copy never writes or deletes the original's files."""
    place = Path(tempfile.mkdtemp(dir=tmp_path))
    original, target = place / "original", place / "target"
    shutil.copytree(stopped_run, original)
    if how == "moved":
        shutil.move(original, target)
    elif how.startswith("cp"):
        subprocess.run([*how.split(), str(original), str(target)], check=True)
    elif how == "a link to it":
        target.symlink_to(original)
    else:  # checkpoints/ on a scratch disk, the run reached as it is
        shutil.move(original / "checkpoints", place / "scratch")
        (original / "checkpoints").symlink_to(place / "scratch")
        target = original
    before = snapshot(original) if how.startswith("cp") else None
    assert resume(target)["epochs"] == 3
    assert json.loads((target / "metrics.json").read_text())["global_step"] == 24
    if before is not None:
        assert snapshot(original) == before
    assert not (target / ".lock").exists()


def test_a_run_reached_through_a_link_is_locked_as_itself(stopped_run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(stopped_run)
    with held_by_another_process(stopped_run) as pid, pytest.raises(OutputError) as error:
        resume(link)
    assert f"is in use by process {pid}" in str(error.value)


def test_checkpoints_on_another_disk_resume_exactly_and_are_one_runs(fixture_data_dir, tmp_path):
    """checkpoints/ as a symbolic link to a scratch folder: the run is killed, resumed, and ends
    as if never stopped; while one run holds that folder, another run reaching it is refused."""
    run_dir, scratch = tmp_path / "run", tmp_path / "scratch" / "checkpoints"
    scratch.mkdir(parents=True)
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(scratch)
    args = [*FAST, "trainer.max_epochs=3", "callbacks.last_checkpoint.every_n_train_steps=3"]
    kill_when_saved(
        [*args, "logger=csv", f"hydra.run.dir={run_dir}"], fixture_data_dir, signal.SIGKILL
    )
    assert (scratch / "last.ckpt").is_file() and (run_dir / "checkpoints").is_symlink()
    with held_by_another_process(scratch) as pid, pytest.raises(OutputError) as error:
        resume(run_dir)
    assert f"{scratch} is in use by process {pid}" in str(error.value)
    resume(run_dir)
    same_as_never_stopped(run_dir, [*args, "logger=csv"], fixture_data_dir, csv_rows)
    assert (run_dir / "checkpoints").is_symlink() and list(scratch.glob("epoch=*.ckpt"))


def test_a_run_bounded_by_max_steps_resumes_from_an_epochs_end(fixture_data_dir, tmp_path):
    # Lightning restarts such a run at the end of the epoch its checkpoint was saved in, and runs
    # that end again, without the epoch's metrics: no crash, and no epoch recorded twice.
    run_dir = tmp_path / "run"
    finished_run(fixture_data_dir, run_dir, "trainer.max_epochs=-1", "+trainer.max_steps=24")
    unfinished(run_dir, -1)
    record = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    record["config"]["trainer"]["max_steps"] = 32  # a fourth epoch of 8 steps
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(record))
    metrics = resume(run_dir)
    assert metrics["global_step"] == 32 and metrics["epochs"] == 4
    history = metrics["history"]
    assert len(history["epoch_seconds"]) == 4 and None not in history["train/loss"]


def test_each_attempt_of_a_resumed_run_is_an_mlflow_run_with_the_runs_config(
    fixture_data_dir, tmp_path
):
    """MLflow cannot take back what a killed attempt logged, so each attempt is a run of its
    own, named after the folder; each must carry the config, or the resumed one is missing from
    every comparison by parameter. The killed attempt is marked KILLED, not left RUNNING."""
    run_dir, store = tmp_path / "run", tmp_path / "store"
    finished_run(fixture_data_dir, run_dir, *mlflow_overrides(store))
    unfinished(run_dir, 3)
    client, (killed,) = mlflow_runs(store)
    client.update_run(killed.info.run_id, status="RUNNING")  # as a killed attempt leaves it
    places = [f"++{override}" for override in mlflow_overrides(store)[1:]]  # as README says
    train(compose([f"resume={run_dir}", *places], run_dir))
    _, runs = mlflow_runs(store)
    first, resumed = sorted(runs, key=lambda run: run.info.start_time)
    assert first.info.run_name == resumed.info.run_name == "run"
    assert (first.info.status, resumed.info.status) == ("KILLED", "FINISHED")
    params, before = resumed.data.params, first.data.params
    assert set(params) == set(before)
    changed = {key for key in params if params[key] != before[key]}
    assert changed == {"config/trainer/max_epochs"} and params[changed.pop()] == "3"  # unfinished
    assert (
        resumed.data.metrics["test/acc"]
        == json.loads((run_dir / "metrics.json").read_text())["test/acc"]
    )


def test_overrides_beside_resume_are_refused(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    finished_run(fixture_data_dir, run_dir)
    unfinished(run_dir, 3)
    with pytest.raises(ConfigError) as error:
        train(compose([f"resume={run_dir}", "optimizer.lr=0.5"], run_dir))
    assert str(error.value) == (
        f"resume continues {run_dir} with its own recorded config (run_config.yaml); "
        "these overrides would change the run: optimizer.lr=0.5. Drop them, or start a new run "
        "with them."
    )


def test_a_checkpoint_of_another_network_is_refused_in_one_line(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    finished_run(fixture_data_dir, run_dir)
    unfinished(run_dir, 3)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["state_dict"]["net.hidden1.weight"] = torch.zeros(64, 784)
    torch.save(checkpoint, last)
    with pytest.raises(
        CheckpointError, match=r"cannot be restored .*size mismatch for net.hidden1.weight"
    ) as error:
        resume(run_dir)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["none written", "a metric not a number", "infinite"])
def test_a_run_killed_while_testing_finishes_with_every_metric(fixture_data_dir, tmp_path, damage):
    """Results that are not whole (killed after the fit, before they were written; or edited:
    a sweeper would take `val/acc_best` as the run's result) are written again."""
    run_dir = tmp_path / "run"
    whole = finished_run(fixture_data_dir, run_dir)
    if damage == "none written":
        (run_dir / "metrics.json").unlink()
    else:
        edited = {**whole, "val/acc_best": "0.99" if damage != "infinite" else float("inf")}
        (run_dir / "metrics.json").write_text(json.dumps(edited))
    metrics = resume(run_dir)
    for name in ("train/loss", "train/acc", "val/acc", "val/acc_best", "test/acc"):
        assert metrics[name] == pytest.approx(whole[name]), name
    assert metrics["history"] == whole["history"] and metrics["epochs"] == 2
    assert resume(run_dir) == json.loads((run_dir / "metrics.json").read_text())  # finished


def test_a_run_interrupted_mid_epoch_resumes_as_if_never_stopped(fixture_data_dir, tmp_path):
    """Batches of 4: 128 steps an epoch. Ctrl-C during epoch 2, resume, and the record is that of
    the uninterrupted run: three epochs, each timed as an epoch, every step once, no point from
    the interrupted attempt after the step it resumed from, and the same figures."""
    run_dir = tmp_path / "run"
    args = [*FAST, "data.batch_size=4", "trainer.max_epochs=3", "trainer.log_every_n_steps=8"]
    process = start_training([*args, f"hydra.run.dir={run_dir}"], fixture_data_dir)
    first_epoch = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not first_epoch.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert "resume with: python -m mnist_lightning.train resume=" in output
    interrupted_at = torch.load(first_epoch, weights_only=True)["global_step"]

    result = run_module("mnist_lightning.train", f"resume={run_dir}", data_dir=fixture_data_dir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    assert metrics["global_step"] == 3 * 128 and metrics["epochs"] == 3
    assert all(len(history[name]) == 3 for name in ("train/loss", "val/acc", "epoch_seconds"))
    assert max(history["epoch_seconds"]) < 60  # the resumed epoch is timed as an epoch
    assert 0 < history["train/loss"][1] < 3  # the resumed epoch has its training metrics

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss_step")]
    assert steps == list(range(7, 3 * 128, 8))  # each written step once, in order
    assert [e.step for e in events.Scalars("val/acc")] == [127, 255, 383]
    assert 0 < interrupted_at <= 3 * 128
    # The same run as one never stopped, to the last digit; Lightning has nothing to warn about.
    assert "not resumable" not in result.stdout + result.stderr
    same_as_never_stopped(run_dir, args, fixture_data_dir, tensorboard_scalars)


def test_a_killed_sweep_run_again_keeps_finished_jobs_and_runs_the_rest(fixture_data_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [
        "-m",
        "model.activation=relu,tanh",
        *FAST,
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    process = start_training(command, fixture_data_dir)
    deadline = time.time() + 180
    while not (sweep_dir / "1" / "run_config.yaml").exists() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns
    assert not (sweep_dir / "1" / "metrics.json").exists()  # killed while it ran

    result = run_module("mnist_lightning.train", *command, data_dir=fixture_data_dir, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns == finished  # not trained again
    with (sweep_dir / "summary.csv").open() as f:
        import csv

        rows = {r["overrides"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["model.activation=relu", "model.activation=tanh"]
    assert all(row["status"] == "ok" and row["epochs"] == "2" for row in rows.values())


def test_a_run_with_a_logger_list_and_parts_removed_resumes_with_resume_alone(
    fixture_data_dir, tmp_path
):
    """The record holds the run's own config, its loggers and removed parts included: resume=
    alone continues it; in a folder whose name holds Hydra's special characters, quoted as the
    README says."""
    run_dir = tmp_path / "my run (1)[a],b=c#d~e{f}'g"
    finished_run(
        fixture_data_dir, run_dir, "logger=[csv,tensorboard]", "~callbacks.gradient_monitor"
    )
    unfinished(run_dir, 3)
    cfg = compose([f"resume={hydra_quoted(str(run_dir))}"], run_dir)
    metrics = train(cfg)
    assert metrics["epochs"] == 3 and "gradient_norms" not in metrics
    assert (run_dir / "metrics.csv").is_file() and list(run_dir.glob("events.out.tfevents.*"))
