"""Trackers (MLflow on SQLite, W&B offline) and the CNN beside the lesson's MLP."""

from __future__ import annotations

import contextlib
import glob
import json
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_lightning.data import to_model_input
from mnist_lightning.doors.checkpoints import load_trained, read_checkpoint
from mnist_lightning.errors import ConfigError
from mnist_lightning.folders import resolve_checkpoint
from mnist_lightning.models.networks import CNN
from mnist_lightning.train import train
from tests.conftest import FAST, compose, load_fixture, onnx_session, train_relu_adam


def mlflow_overrides(store: Path) -> list[str]:
    return [
        "logger=mlflow",
        f"logger.mlflow.tracking_uri=sqlite:///{store}/mlflow.db",
        f"logger.mlflow.artifact_location=file://{store}/artifacts",
    ]


def mlflow_runs(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-lightning")
    return client, client.search_runs([experiment.experiment_id])


def artifacts(client, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def check_mlflow_runs(store: Path, sweep_dir: Path) -> None:
    """Each finished job of a sweep is an MLflow run in `store`, with the config as parameters,
    every metric by its name, the test results, the figures and the tested checkpoint.

    Called by the joblib sweep of test_sweeps: two jobs at once write to one SQLite store."""
    client, runs = mlflow_runs(store)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    done = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert sorted(run.info.run_name.split(":")[0] for run in finished) == done and len(done) >= 2
    for run in finished:
        job = run.info.run_name.split(":")[0]
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
        assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= set(
            run.data.metrics
        )
        assert run.data.params["config/model/net/name"] == "mlp"
        assert run.data.params["config/optimizer/name"] in ("sgd", "adam")
        files = artifacts(client, run.info.run_id)
        assert {"samples.png", "confusion_matrix.png", "metrics.json"} <= set(files)
        assert f"checkpoints/{Path(metrics['test_checkpoint']).name}" in files


def wandb_records(run_folder: Path) -> list:
    """The records of an offline W&B run file (LevelDB log blocks of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(
        glob.glob(str(run_folder / "wandb" / "offline-run-*" / "run-*.wandb"))[0]
    ).read_bytes()
    assert data[:4] == b":W&B"
    block, position, records, pending = 32768, 7, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    parsed = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def test_wandb_offline_keeps_the_run_in_its_folder_and_tries_no_network(
    fixture_data_dir, tmp_path, monkeypatch
):
    attempts, requests = [], []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept():
        while True:
            try:
                connection, address = listener.accept()
            except OSError:
                return
            attempts.append(address)
            connection.settimeout(2)
            with contextlib.suppress(OSError):  # what was tried, for the failure message
                requests.append(connection.recv(200))
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"  # any web request would land here
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "")  # the run decides; restored afterwards
    monkeypatch.delenv("WANDB_ERROR_REPORTING")
    train(compose([f"data.data_dir={fixture_data_dir}", *FAST, "logger=wandb"], tmp_path))
    listener.close()
    assert attempts == [], requests
    history = {
        item.key or "/".join(item.nested_key)
        for record in wandb_records(tmp_path)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
    }
    assert {"train/loss", "train/acc", "val/acc", "val/acc_best", "test/acc"} <= history


def test_group_configs_finds_the_loggers_of_a_class_by_their_targets(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

    from mnist_lightning.config import group_configs

    cfg = compose(["logger=many", "+logger.typo._target_=no.such.Logger"], tmp_path)
    assert [n.save_dir for n in group_configs(cfg.logger, TensorBoardLogger)] == [str(tmp_path)]
    assert [n._target_ for n in group_configs(cfg.logger, MLFlowLogger)] == [
        "lightning.pytorch.loggers.MLFlowLogger"
    ]
    # Subclasses count; a target that does not import is left to the build to report.
    assert len(group_configs(cfg.logger, Logger)) == 3
    assert group_configs(compose(["logger=csv"], tmp_path).logger, TensorBoardLogger) == []
    assert len(group_configs(compose(["logger=csv"], tmp_path).logger, CSVLogger)) == 1
    assert group_configs(compose(["logger=none"], tmp_path).get("logger"), Logger) == []


def test_preparing_a_sweeps_mlflow_store_does_not_load_lightning_into_the_launcher(tmp_path):
    # The process that launches a joblib or SLURM sweep never needs Lightning; importing it
    # there would add seconds to every sweep's start.
    script = f"""
import sys
from hydra import compose, initialize_config_dir
from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.hydra_callbacks import PrepareTrackingStores
with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
    cfg = compose("train", overrides={mlflow_overrides(tmp_path)!r})
PrepareTrackingStores().on_multirun_start(cfg)
print("lightning" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    client, _ = mlflow_runs(tmp_path)  # the experiment was made
    assert client.get_experiment_by_name("mnist-lightning") is not None


def test_a_tracker_without_its_extra_is_one_line_naming_it(fixture_data_dir, tmp_path, monkeypatch):
    # As if mlflow were not installed: importing it (or any part of it) raises ImportError.
    for name in [n for n in sys.modules if n == "mlflow" or n.startswith("mlflow.")] + [
        "mlflow",
        "mlflow.tracking",
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError) as error:
        train(compose([f"data.data_dir={fixture_data_dir}", *FAST, "logger=mlflow"], tmp_path))
    message = str(error.value)
    assert message.startswith("logger needs the 'tracking' extra") and "\n" not in message
    assert "pip install -e '.[tracking]'" in message


# --- the CNN ---------------------------------------------------------------------------------


def test_the_cnn_is_small_and_maps_images_to_ten_logits():
    net = CNN("relu")
    assert sum(p.numel() for p in net.parameters()) == 74_578 <= 100_000
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in CNN("relu", channels=(8, 16, 32)).parameters()) < 74_578


def test_the_cnn_defaults_to_relu_and_the_mlp_keeps_the_lessons_sigmoid(tmp_path):
    def composed(*overrides):
        model = compose(list(overrides), tmp_path).model
        return model.net.name, model.activation

    assert composed() == ("mlp", "sigmoid")
    assert composed("model/net=cnn") == ("cnn", "relu")
    assert composed("model/net=cnn", "model.activation=tanh") == ("cnn", "tanh")
    assert composed("model/net=mlp", "model.activation=gelu") == ("mlp", "gelu")


@pytest.fixture(scope="module")
def cnn_run(fixture_data_dir, tmp_path_factory) -> Path:
    return train_relu_adam(
        tmp_path_factory.mktemp("cnn"), fixture_data_dir, "model/net=cnn", "trainer.max_epochs=4"
    )


def test_a_short_cnn_fit_learns_and_keeps_its_network_in_the_checkpoint(cnn_run):
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5  # far above chance on the stand-in digits
    assert metrics["history"]["train/loss"][-1] < metrics["history"]["train/loss"][0]
    model = load_trained(cnn_run).model
    assert isinstance(model.net, CNN)
    checkpoint = read_checkpoint(resolve_checkpoint(cnn_run))
    assert checkpoint["hyper_parameters"]["net"] == {"name": "cnn", "channels": [24, 48, 96]}


def test_the_cnn_exports_to_onnx_with_the_same_answers(cnn_run, fixture_data_dir, tmp_path):
    from mnist_lightning.export import export, exportable

    images = load_fixture(fixture_data_dir)["test"][0]
    model = load_trained(cnn_run).model
    with torch.no_grad():
        expected = model(to_model_input(images)).numpy()
    session = onnx_session(export(exportable(cnn_run), "onnx", tmp_path / "m.onnx"))
    for batch in (images, images[:1], images[:37]):
        (logits,) = session.run(None, {"images": (batch.float() / 255).numpy()})
        np.testing.assert_allclose(logits, expected[: len(batch)], atol=1e-4)


def test_predict_evaluate_and_serve_work_with_the_cnn(
    cnn_run, fixture_data_dir, tmp_path, monkeypatch
):
    import sys

    from mnist_lightning.evaluate import evaluate
    from mnist_lightning.predict import predict
    from mnist_lightning.serve.api import DigitAPI
    from tests.test_tools import tool_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from user_digits import make_user_digits

    monkeypatch.setenv("MNIST_DATA_DIR", str(fixture_data_dir))
    trained = json.loads((cnn_run / "metrics.json").read_text())
    results = evaluate(tool_config("evaluate", [f"ckpt_path={cnn_run}"], tmp_path / "eval"))
    assert results["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-4)

    images, labels = load_fixture(fixture_data_dir)["test"]
    made = make_user_digits(images[:20, 0].numpy(), labels[:20].numpy(), tmp_path / "digits")
    answers = predict(
        tool_config(
            "predict", [f"ckpt_path={cnn_run}", f"inputs=[{tmp_path / 'digits'}]"], tmp_path / "p"
        )
    )
    assert len(answers) == len(made) and all("digit" in a for a in answers)

    api = DigitAPI(load_trained(cnn_run))
    api.setup("cpu")
    probabilities, seen = api.predict(api.batch([images[i] for i in range(4)]))[0]
    assert probabilities.shape == (10,) and torch.equal(seen, images[0])
