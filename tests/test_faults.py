"""Faults and bad input: killed runs resume, NaN stops, bad values refused, DDP and launchers."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_lightning.data import mnist_files, preprocess
from mnist_lightning.doors import images
from mnist_lightning.errors import ConfigError, MNISTDataError, TrainingDiverged, UserError
from mnist_lightning.folders import writable
from mnist_lightning.train import train
from tests.conftest import FAST, compose, run_module, start_training
from tests.test_exact_resume import figures


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_a_killed_run_resumes_in_its_folder_and_finishes(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "killed"
    args = [*FAST, "experiment=relu_adam", "trainer.max_epochs=6"]
    process = start_training([*args, f"hydra.run.dir={run_dir}"], fixture_data_dir)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / ".lock").exists()  # the killed run's lock file, no longer locked

    train(compose([f"resume={run_dir}", f"data.data_dir={fixture_data_dir}"], run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 6 and len(metrics["history"]["val/acc"]) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]  # no second run folder
    assert all(
        p.parent == run_dir for p in run_dir.rglob("events.out.tfevents.*")
    )  # one TensorBoard run

    # kill -9 between epochs: the same run as one never stopped, to the last digit.
    train(compose([f"data.data_dir={fixture_data_dir}", *args], tmp_path / "whole"))
    assert figures(run_dir) == figures(tmp_path / "whole")


def test_a_diverging_loss_stops_early_and_keeps_the_best_checkpoint(fixture_data_dir, tmp_path):
    # Epoch 1 trains well at lr 0.1; then the step scheduler multiplies the rate by 1e5.
    overrides = [
        f"data.data_dir={fixture_data_dir}",
        *FAST,
        "trainer.max_epochs=5",
        "model.activation=relu",
        "optimizer.lr=0.1",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=100000",
    ]
    with pytest.raises(TrainingDiverged) as error:
        train(compose(overrides, tmp_path))
    message = str(error.value)
    assert message.startswith("training stopped in epoch 2: train/loss became")
    assert "learning rate is probably too high (SGD lr=" in message
    assert "The best checkpoint so far is kept: " in message
    best = [p for p in (tmp_path / "checkpoints").glob("epoch=*.ckpt")]
    assert [p.name.split("-")[0] for p in best] == ["epoch=00"]
    state = torch.load(best[0], weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


BAD_VALUES = [
    ("data.batch_size=0", "data.batch_size=0: must be a whole number between 1 and 1,000,000"),
    ("data.batch_size=-3", "data.batch_size=-3: must be a whole number between 1 and 1,000,000"),
    ("data.eval_batch_size=1.5", "data.eval_batch_size=1.5: must be a whole number"),
    ("data.val_size=0", "data.val_size=0: must be a whole number between 1 and 59,999"),
    ("data.val_size=60000", "data.val_size=60000: must be a whole number between 1 and 59,999"),
    ("data.val_size=true", "data.val_size=True: must be a whole number"),
    ("data.shuffle=maybe", "data.shuffle=maybe: must be true or false"),
    ("+data.batchsize=32", "data.batchsize: no such setting; did you mean data.batch_size?"),
    ("seed=abc", "seed=abc: must be a whole number"),
    ("seed=4294967296", "seed=4294967296: must be a whole number between 0 and 4,294,967,295"),
    (
        "model/net=cnn model.net.channels=[0,48,96]",
        "model.net.channels[0]=0: must be a whole number between 1 and 4,096",
    ),
    ("model/net=cnn model.net.channels=[1,2]", "model.net.channels=[1, 2]: must be a list of 3"),
    ("cpu_threads=0", "cpu_threads=0: must be a whole number between 1 and 1,024, or null"),
    ("optimizer.lr=0", "optimizer.lr=0: must be a finite number above 0"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1: must be a finite number above 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan: must be a finite number above 0"),
    ("optimizer.momentum=-1", "optimizer.momentum=-1: Invalid momentum value: -1"),
    (
        "optimizer=adam optimizer.betas=[1.5,0.9]",
        "optimizer=adam optimizer.betas=[1.5,0.9]: Invalid beta parameter at index 0: 1.5",
    ),
    ("model.activation=sigmod", "model.activation=sigmod: must be one of sigmoid, relu"),
    (
        "model.label_smoothing=1.5",
        "model.label_smoothing=1.5: must be a finite number at least 0 and below 1",
    ),
    (
        "model.label_smoothing=-0.1",
        "model.label_smoothing=-0.1: must be a finite number at least 0",
    ),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: must be a whole number at least 1"),
    (
        "trainer.precision=63",
        "trainer.precision=63: must be one of 64, 32, 16, transformer-engine, ",
    ),
    (
        "+trainer.max_epoch=3",
        "trainer.max_epoch: no such setting; did you mean trainer.max_epochs?",
    ),
    (
        "scheduler=step scheduler.step_size=0",
        "scheduler.step_size=0: must be a whole number at least 1",
    ),
    (
        "scheduler=step scheduler.interval=batch",
        "scheduler.interval=batch: must be one of epoch, step",
    ),
    (
        "+scheduler.frequency=2",
        "scheduler.frequency=2 is set without a scheduler: choose one as well",
    ),
    (
        "scheduler=cosine +scheduler.frequency=0",
        "scheduler.frequency=0: must be a whole number at least 1",
    ),
    (
        "scheduler=onecycle scheduler.pct_start=2",
        "scheduler.pct_start=2: must be a finite number above 0",
    ),
    ("augment=affine augment.scale=[2,1]", "augment.scale=[2, 1]: must be [low, high]"),
    (
        "callbacks.model_checkpoint.monitor=val/nope",
        "callbacks.model_checkpoint.monitor=val/nope: not a metric this model logs",
    ),
    (
        "optimized_metric=val/accuracy",
        "optimized_metric=val/accuracy: not a metric this model logs",
    ),
]


@pytest.mark.parametrize("overrides, expected", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_each_bad_value_is_refused_in_one_line_before_any_work(overrides, expected, tmp_path):
    empty = tmp_path / "no_data"  # reaching the data would fail differently
    cfg = compose([*overrides.split(), f"data.data_dir={empty}", "data.download=false"], tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message
    assert not empty.exists() and not (tmp_path / "run_config.yaml").exists()


def test_a_constructors_error_names_the_override_that_caused_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        train(compose(["optimizer.momentum=-1"], tmp_path))
    assert str(error.value) == "optimizer.momentum=-1: Invalid momentum value: -1"


def test_bad_values_end_the_command_in_one_line_each_and_exit_code_1(tmp_path):
    data_file = tmp_path / "data.bin"
    data_file.write_text("x")
    result = run_module(
        "mnist_lightning.train",
        "data.batch_size=0",
        "data.shuffle=maybe",
        f"data.data_dir={data_file}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[-3:] == [
        "error: data.batch_size=0: must be a whole number between 1 and 1,000,000",
        "data.shuffle=maybe: must be true or false",
        f"data.data_dir={data_file}: is a file; it must be a folder holding MNIST/raw/",
    ]
    assert "Traceback" not in result.stdout + result.stderr
    # Nothing but what Hydra writes before any command runs: its record, the log.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "train.log"]


def test_an_unwritable_output_folder_is_reported_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the folder .*hydra.run.dir"):
        writable(blocker / "run")


def test_a_read_only_data_folder_without_files_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_files, "_writable", lambda folder: False)
    with pytest.raises(MNISTDataError, match="cannot be written, so it cannot be downloaded there"):
        mnist_files.load_mnist(tmp_path / "readonly")


def test_a_checkpoint_write_failing_half_way_leaves_the_previous_file_whole(
    fixture_data_dir, tmp_path, monkeypatch
):
    """The disk fills up half-way through writing last.ckpt: the old file stays whole, no
    partial file is left anywhere, and the error is one line naming the folder."""
    import errno

    from mnist_lightning.doors.checkpoints import read_checkpoint
    from mnist_lightning.errors import OutputError
    from mnist_lightning.training.check import check
    from mnist_lightning.training.run import build

    run_dir = tmp_path / "run"
    cfg = compose([f"data.data_dir={fixture_data_dir}", *FAST, "logger=none"], run_dir)
    datamodule, model, trainer = build(check(cfg))
    trainer.fit(model, datamodule=datamodule)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    real_write_bytes = Path.write_bytes

    def disk_full_half_way(self, data):
        real_write_bytes(self, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full_half_way)
    with pytest.raises(OutputError) as error:
        trainer.save_checkpoint(last)
    message = str(error.value)
    assert "\n" not in message
    assert f"cannot write last.ckpt in {last.parent} (No space left on device)" in message
    monkeypatch.undo()
    assert last.read_bytes() == before and read_checkpoint(last)["state_dict"]
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(
        p.name for p in last.parent.iterdir() if not p.name.startswith(".")
    )  # no temporary file left beside it


@contextmanager
def mounted_tmpfs(folder: Path, size: str, read_only: bool = False):
    """A small filesystem of its own at `folder` (a real full disk, or one that refuses every
    write, even root's)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_during_training_ends_in_one_line_and_keeps_whole_checkpoints(
    fixture_data_dir, tmp_path
):
    with mounted_tmpfs(tmp_path / "small", "1600k") as small:
        run_dir = small / "run"
        result = run_module(
            "mnist_lightning.train",
            *FAST,
            "trainer.max_epochs=30",
            "trainer.log_every_n_steps=1",
            f"hydra.run.dir={run_dir}",
            data_dir=fixture_data_dir,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-3000:]
        assert "Traceback" not in output and "Logging error" not in output, output[-3000:]
        last = [line for line in result.stdout.splitlines() if line.strip()][-1]
        assert last.startswith("error: ") and "No space left on device" in last, last
        checkpoints = run_dir / "checkpoints"
        assert not (run_dir / "metrics.json").exists()
        for checkpoint in checkpoints.glob("*.ckpt"):  # what was written is whole
            assert read_checkpoint_ok(checkpoint)
        assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]


def test_a_read_only_folder_is_refused_in_one_line_before_anything_is_written(
    fixture_data_dir, tmp_path
):
    with mounted_tmpfs(tmp_path / "read_only", "1m", read_only=True) as read_only:
        result = run_module(
            "mnist_lightning.train",
            *FAST,
            f"hydra.run.dir={read_only / 'x'}",
            data_dir=fixture_data_dir,
        )
        assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
        last = result.stdout.strip().splitlines()[-1]
        assert last.startswith(f"error: cannot write the folder {read_only / 'x'}"), last
        assert "Read-only file system" in last


def read_checkpoint_ok(path) -> bool:
    from mnist_lightning.doors.checkpoints import read_checkpoint

    return bool(read_checkpoint(path)["state_dict"])


# A diverging job of a submitit_local sweep: tests/test_search.py, in the Optuna search that
# runs one submitit job a trial.


# --- fuzzing: every input ends in a result or a clear error, quickly and in bounded memory ---


@settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=2048), name=st.sampled_from(sorted(mnist_files.RAW_FILES)))
def test_fuzz_idx_header_reader(content, name, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    try:
        dims = mnist_files.read_idx_header(path)
    except MNISTDataError as error:
        assert str(path) in str(error)
    else:
        assert path.stat().st_size == (16 if len(dims) == 3 else 8) + int(np.prod(dims))


@settings(
    max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3), body=st.binary(max_size=64)
)
def test_fuzz_lying_headers_never_allocate_what_they_claim(dims, body, tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I3I", 0x803, *dims) + body)
    try:
        mnist_files.read_idx_header(path)
    except MNISTDataError as error:
        assert "train-images-idx3-ubyte" in str(error)


@settings(
    max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1", "I;16"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_preprocessing_of_random_images(height, width, mode, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    try:
        result = preprocess.to_mnist(image)
    except preprocess.ImageError as error:
        assert "no digit found" in str(error)
    else:
        assert result.shape == (1, 28, 28) and result.dtype == torch.uint8


@settings(
    max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.binary(max_size=4096),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp", ".tif"]),
)
def test_fuzz_image_files_of_random_bytes(content, suffix, tmp_path):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(content)
    try:
        preprocess.to_mnist(images.load_image(path))
    except preprocess.ImageError as error:
        assert str(path) in str(error) or "no digit found" in str(error)
