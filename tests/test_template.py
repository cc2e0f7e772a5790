"""The workflows of ashleve/lightning-hydra-template's own test suite (its tests/test_train.py,
test_sweeps.py, test_eval.py, test_configs.py and test_datamodules.py), as a user of that
template tries them here, in this project's names; and the ways to train longer, to start from
a trained model and to turn a part off. The README's "Coming from lightning-hydra-template"
shows each beside the template's words. (The template's GPU tests run here too, on a machine
with a GPU.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import hydra
import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.errors import CheckpointError, ConfigError
from mnist_lightning.train import train
from tests.conftest import FAST, compose, hydra_quoted, run_module

NO_LOGGER = "logger=[]"  # the template's way to train without one


def fixture_run(data_dir: Path, *overrides: str) -> list[str]:
    return [f"data.data_dir={data_dir}", *FAST, *overrides]


# --- the template's tests/test_train.py ---------------------------------------------------------


def test_train_fast_dev_run(fixture_data_dir, tmp_path):
    cfg = compose(
        fixture_run(fixture_data_dir, "+trainer.fast_dev_run=true", "trainer.accelerator=cpu"),
        tmp_path,
    )
    HydraConfig().set_config(cfg)
    metrics = train(cfg)
    assert metrics["global_step"] == 1 and 0 <= metrics["test/acc"] <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the template's GPU test needs a GPU")
def test_train_fast_dev_run_gpu(fixture_data_dir, tmp_path):
    metrics = train(
        compose(
            fixture_run(fixture_data_dir, "+trainer.fast_dev_run=true", "trainer=gpu"), tmp_path
        )
    )
    assert metrics["global_step"] == 1


def test_train_epoch_mixed_precision(fixture_data_dir, tmp_path):
    # (the template's "gpu_amp" test sets accelerator=cpu and precision=16 itself)
    metrics = train(
        compose(
            fixture_run(fixture_data_dir, "trainer.accelerator=cpu", "trainer.precision=16"),
            tmp_path,
        )
    )
    assert metrics["epochs"] == 1 and metrics["global_step"] == 8  # 512 images in batches of 64


def test_train_epoch_double_val_loop(fixture_data_dir, tmp_path):
    overrides = fixture_run(
        fixture_data_dir, "data.batch_size=16", "+trainer.val_check_interval=0.5"
    )
    metrics = train(compose(overrides, tmp_path))
    # Two validations in the one epoch, each in the history (with the images trained so far).
    assert len(metrics["history"]["val_check/val/acc"]) == 2


def test_train_resume_trains_longer_exactly(fixture_data_dir, tmp_path):
    """The template's resume: 1 epoch, then on from last.ckpt with trainer.max_epochs=2. Here the
    longer run is the very run two epochs would have been, to the last digit."""
    run = tmp_path / "run"
    learner = ["model.activation=relu", "optimizer=adam"]  # (the template's defaults)
    first = train(compose(fixture_run(fixture_data_dir, *learner), run))
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in files and any(f.startswith("epoch=00") for f in files)

    longer = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"]
    second = train(compose([*longer, f"data.data_dir={fixture_data_dir}"], run))
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in files and not any(f.startswith("epoch=02") for f in files)
    assert first["train/acc"] < second["train/acc"] and second["epochs"] == 2

    straight = train(
        compose(fixture_run(fixture_data_dir, *learner, "trainer.max_epochs=2"), tmp_path / "b")
    )
    for name in ("train/loss", "val/acc", "test/acc", "test/loss", "global_step"):
        assert second[name] == straight[name], name
    assert second["history"]["train/loss"] == straight["history"]["train/loss"]
    record = yaml.safe_load((run / "run_config.yaml").read_text())
    assert record["config"]["trainer"]["max_epochs"] == 2  # resume=<run> alone goes on from here
    assert record["extended"] == [{"overrides": ["trainer.max_epochs=2"], "from_step": 8}]


# --- the template's tests/test_sweeps.py --------------------------------------------------------


def sweep(tmp_path: Path, data_dir: Path, *overrides: str):
    result = run_module(
        "mnist_lightning.train",
        "-m",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *fixture_run(data_dir, *overrides),
        NO_LOGGER,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    return [json.loads(job.read_text()) for job in jobs], result


def test_experiments(fixture_data_dir, tmp_path):
    """The template's test_experiments: every experiment, ++trainer.fast_dev_run=true, logger=[]."""
    jobs, _ = sweep(tmp_path, fixture_data_dir, "experiment=glob(*)", "++trainer.fast_dev_run=true")
    experiments = len(list((Path(CONFIG_DIR) / "experiment").glob("*.yaml")))
    assert len(jobs) == experiments and all(job["global_step"] == 1 for job in jobs)


def test_hydra_sweep_ddp_sim_with_fractional_limits(fixture_data_dir, tmp_path):
    limits = ["+trainer.limit_train_batches=0.5", "+trainer.limit_val_batches=0.1"]
    limits += ["+trainer.limit_test_batches=0.1"]
    # A tenth of each process's one validation batch is none: refused before any work, saying
    # which batch size to lower.
    # (in this process: the refusal comes before Lightning starts the second one)
    refused = compose(fixture_run(fixture_data_dir, "trainer=ddp_cpu", *limits), tmp_path / "no")
    with pytest.raises(ConfigError) as error:
        train(refused)
    assert str(error.value) == (
        "trainer.limit_val_batches=0.1 of the 1 validation batches each of the 2 "
        "processes gets (64 images, data.eval_batch_size=1,000) is no batch: lower "
        "data.eval_batch_size to 6 or less, or give a number of batches "
        "(trainer.limit_val_batches=1)"
    )
    assert not (tmp_path / "no" / "run_config.yaml").exists()
    # The template's test_train_ddp_sim (2 epochs on 2 CPU processes: trainer=ddp_cpu, Lightning's
    # ddp, which runs the whole command in each process) and test_hydra_sweep (learning rates)
    # in one sweep. Its first job is refused (lr -1): a refusal of what the sweep varies is that
    # job's alone, and the sweep goes on.
    jobs, _ = sweep(
        tmp_path,
        fixture_data_dir,
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        *limits,
        "data.eval_batch_size=6",
        "optimizer.lr=-1,0.005,0.01",
    )
    assert (tmp_path / "sweep" / "0" / "failure.json").is_file()
    assert len(jobs) == 2 and all(job["world_size"] == 2 for job in jobs)
    assert all(job["global_step"] == 2 * 2 for job in jobs)  # half of each process's 4 batches
    assert all({"test/acc", "val/acc_best", "train/loss"} <= set(job) for job in jobs)
    for job in ("1", "2"):
        assert len(list((tmp_path / "sweep" / job / "checkpoints").glob("epoch=*.ckpt"))) == 1


# The template's test_optuna_sweep runs in two workers on one study, on a journal file and on a
# PostgreSQL server: tests/test_search.py, test_workers_in_two_processes_share_one_study.


# --- the template's tests/test_eval.py and test_configs.py ---------------------------------------


def test_train_eval(trained_run, tmp_path, fixture_data_dir, monkeypatch):
    from mnist_lightning.evaluate import evaluate
    from tests.test_tools import tool_config

    monkeypatch.setenv("MNIST_DATA_DIR", str(fixture_data_dir))
    trained = json.loads((trained_run / "metrics.json").read_text())
    tested = trained_run / trained["test_checkpoint"]
    metrics = evaluate(
        tool_config("evaluate", [f"ckpt_path={hydra_quoted(str(tested))}"], tmp_path)
    )
    assert metrics["test/acc"] > 0 and abs(trained["test/acc"] - metrics["test/acc"]) < 0.001


def test_train_config_instantiates_with_hydra(tmp_path):
    cfg = compose(["optimizer=adam", "scheduler=cosine", "augment=affine"], tmp_path)
    HydraConfig().set_config(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    trainer = hydra.utils.instantiate(cfg.trainer)
    callbacks = [hydra.utils.instantiate(n) for n in cfg.callbacks.values() if n]
    # The objects train builds: the chosen optimizer, schedule and augmentation, plain settings.
    assert model.hparams.optimizer["name"] == "adam" and model.hparams.scheduler["name"] == "cosine"
    assert type(model.hparams.net) is dict and datamodule.augment is not None
    assert trainer.max_epochs == 10 and len(callbacks) >= 10


def test_eval_config(tmp_path):
    from mnist_lightning.settings import EvaluateOptions, command_options
    from tests.test_tools import tool_config

    options = command_options(EvaluateOptions, tool_config("evaluate", ["ckpt_path=x"], tmp_path))
    assert options.split == "test" and options.ckpt_path == "x"


# --- the template's tests/test_datamodules.py ---------------------------------------------------


@pytest.mark.parametrize("batch_size", [32, 128])
def test_mnist_datamodule(batch_size, fixture_data_dir):
    from mnist_lightning.data.datamodule import MNISTDataModule

    datamodule = MNISTDataModule(
        data_dir=str(fixture_data_dir), batch_size=batch_size, val_size=128
    )
    datamodule.prepare_data()
    assert not datamodule.splits and (fixture_data_dir / "MNIST" / "raw").is_dir()
    datamodule.setup()
    loaders = (
        datamodule.train_dataloader(),
        datamodule.val_dataloader(),
        datamodule.test_dataloader(),
    )
    assert all(loaders)
    assert sum(len(split) for split in datamodule.splits.values()) == 640 + 160
    # A batch as the model gets it: the images go to the device as bytes, and become numbers there.
    x, y = datamodule.on_after_batch_transfer(next(iter(loaders[0])), 0)
    assert len(x) == len(y) == batch_size
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_the_real_datamodule_has_70000_images(real_data_dir):
    from mnist_lightning.data.datamodule import MNISTDataModule

    datamodule = MNISTDataModule(data_dir=str(real_data_dir), download=False)
    datamodule.prepare_data()
    datamodule.setup()
    assert sum(len(split) for split in datamodule.splits.values()) == 70_000


# --- turning a part off; strategies; training longer; starting from a trained model -------------


@pytest.mark.parametrize("off", ["logger=[]", "~logger", "logger=none", "~logger.tensorboard"])
def test_every_way_to_turn_the_logger_off_trains(off, fixture_data_dir, tmp_path):
    metrics = train(compose(fixture_run(fixture_data_dir, off), tmp_path))
    assert metrics["epochs"] == 1 and not list(tmp_path.glob("events.out.tfevents.*"))


def test_ddp_spawn_is_one_line_before_any_work(fixture_data_dir, tmp_path):
    cfg = compose(
        fixture_run(fixture_data_dir, "trainer=ddp_cpu", "trainer.strategy=ddp_spawn"), tmp_path
    )
    with pytest.raises(
        ConfigError, match=r"^trainer.strategy=ddp_spawn trains in processes that end"
    ):
        train(cfg)
    assert not (tmp_path / "run_config.yaml").exists()


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_a_schedule_bound_to_the_runs_length_is_not_trained_longer(
    scheduler, trained_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    record = yaml.safe_load((run / "run_config.yaml").read_text())
    record["config"]["scheduler"] = {"name": scheduler}
    (run / "run_config.yaml").write_text(yaml.safe_dump(record))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    with pytest.raises(ConfigError, match=f"scheduler={scheduler} is spread over its length"):
        train(compose([f"resume={run}", "trainer.max_epochs=9"], run))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_a_new_run_starts_from_a_trained_models_weights(trained_run, fixture_data_dir, tmp_path):
    from mnist_lightning.doors.checkpoints import load_trained
    from mnist_lightning.training.run import build, start_from_weights
    from mnist_lightning.training.run_folder import RunFolder

    overrides = fixture_run(fixture_data_dir, f"init_from={trained_run}", "optimizer=sgd")
    settings, resume = RunFolder(tmp_path).start_or_continue(compose(overrides, tmp_path))
    source = load_trained(trained_run)
    assert resume is None and settings.model["net"] == source.settings["net"]
    assert settings.model["activation"] == source.settings["activation"] == "relu"
    assert settings.optimizer["name"] == "sgd"  # this run's own optimizer
    _, model, _ = build(settings)
    start_from_weights(model, settings.init_from)
    for name, weight in source.model.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], weight), name

    metrics = train(compose(overrides, tmp_path / "tuned"))
    record = yaml.safe_load((tmp_path / "tuned" / "run_config.yaml").read_text())
    assert record["config"]["model"]["net"] == source.settings["net"] and metrics["epochs"] == 1


def test_starting_from_a_model_refuses_another_network_and_a_bad_file(trained_run, tmp_path):
    for named in ("model/net=cnn", "model.activation=tanh", "+model.net.hidden1=64"):
        with pytest.raises(
            ConfigError, match=f"the network comes with its weights .* drop {re.escape(named)}"
        ):
            train(compose([f"init_from={trained_run}", named], tmp_path / "a"))
    crafted = tmp_path / "crafted.ckpt"
    crafted.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=f"^init_from={crafted}: .* is truncated or not"):
        train(compose([f"init_from={crafted}"], tmp_path / "b"))
    assert not (tmp_path / "a" / "run_config.yaml").exists()


def test_a_sweep_stops_when_its_first_job_is_refused_for_what_every_job_shares(
    fixture_data_dir, tmp_path
):
    result = run_module(
        "mnist_lightning.train",
        "-m",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *fixture_run(
            fixture_data_dir, "optimizer.lr=0.01,0.02,0.03", "+trainer.limit_val_batches=0.1"
        ),
    )
    assert result.returncode == 1
    assert (
        result.stdout.strip().splitlines()[-1].startswith("error: the sweep stops: its first job")
    )
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0", "multirun.yaml"]
