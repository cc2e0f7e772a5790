"""What a finished run shows in TensorBoard: scalars, hparams, images, gradients."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mnist_lightning.train import train
from tests.conftest import FAST, compose


@pytest.fixture(scope="module")
def tensorboard_run(fixture_data_dir, tmp_path_factory) -> Path:
    """A one-epoch run logged to TensorBoard, inside an outputs-like folder."""
    logdir = tmp_path_factory.mktemp("outputs")
    run_dir = logdir / "runs" / "one_epoch"
    cfg = compose(
        [
            f"data.data_dir={fixture_data_dir}",
            *FAST,
            "optimizer=adam",
            "trainer.log_every_n_steps=2",
        ],
        run_dir,
    )
    train(cfg)
    return logdir


def load_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(run_dir), size_guidance={"images": 0, "scalars": 0, "histograms": 0}
    )
    accumulator.Reload()
    return accumulator


def test_event_files_hold_scalars_gradients_images_and_hparams(tensorboard_run):
    events = load_events(tensorboard_run / "runs" / "one_epoch")
    tags = events.Tags()
    for scalar in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/acc",
        "test/loss",
        "train/loss_step",
        "grad_2.0_norm/hidden1.weight",
        "grad_2.0_norm/out.weight",
        "lr-Adam",
    ):
        assert scalar in tags["scalars"], scalar
    assert {"data/samples", "test/confusion_matrix", "test/misclassified"} <= set(tags["images"])
    assert "weights/hidden1.weight" in tags["histograms"]
    # Gradient norms are real numbers, not placeholders.
    assert all(e.value > 0 for e in events.Scalars("grad_2.0_norm/hidden1.weight"))
    # One x-axis for everything, Lightning's step: the step loss and the gradient norms at
    # every 2nd step (log_every_n_steps=2; Lightning counts from 0), epoch metrics at the last.
    metrics = json.loads((tensorboard_run / "runs" / "one_epoch" / "metrics.json").read_text())
    steps = metrics["global_step"]
    assert steps == 8  # 640 - 128 images in batches of 64
    assert [e.step for e in events.Scalars("train/loss_step")] == [1, 3, 5, 7]
    assert [e.step for e in events.Scalars("grad_2.0_norm/hidden1.weight")] == [1, 3, 5, 7]
    assert events.Scalars("val/acc")[-1].step == events.Scalars("train/loss")[-1].step == steps - 1

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["optimizer"].string_value == "adam"
    assert hparams["dataset"].string_value == "mnist"  # (data=fashion_mnist: fashion_mnist)
    assert hparams["activation"].string_value == "sigmoid"
    assert hparams["lr"].number_value == pytest.approx(1e-3)
    assert hparams["batch_size"].number_value == 64 and hparams["seed"].number_value == 42
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {
        "hp/test_acc",
        "hp/test_loss",
        "hp/val_acc_best",
    }
    assert events.Scalars("hp/test_acc")[-1].value == pytest.approx(metrics["test/acc"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_run_over_http(tensorboard_run):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tensorboard_run),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, runs = time.time() + 90, []
        while time.time() < deadline and "runs/one_epoch" not in runs:
            with contextlib.suppress(OSError):
                runs = _get(f"{base}/data/runs")
            time.sleep(0.5)
        assert "runs/one_epoch" in runs
        scalars = _get(f"{base}/data/plugin/scalars/tags")["runs/one_epoch"]
        assert {
            "train/loss",
            "val/acc",
            "val/acc_best",
            "test/acc",
            "grad_2.0_norm/hidden1.weight",
        } <= set(scalars)
        images = _get(f"{base}/data/plugin/images/tags")["runs/one_epoch"]
        assert {"data/samples", "test/confusion_matrix", "test/misclassified"} <= set(images)
        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {
            "optimizer",
            "lr",
            "activation",
            "batch_size",
            "epochs",
            "scheduler",
            "seed",
        } <= names
        groups = _get(
            f"{base}/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 10,
            },
        )
        session = groups["sessionGroups"][0]
        assert session["hparams"]["optimizer"] == "adam"
        assert {m["name"]["tag"] for m in session["metricValues"]} >= {
            "hp/test_acc",
            "hp/val_acc_best",
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
