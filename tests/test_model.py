"""The network, and every optimizer and scheduler config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnist_lightning.network import ACTIVATIONS, MLP
from mnist_lightning.train import build
from tests.conftest import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
SCHEDULERS = sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml"))


def test_the_lessons_network_has_136074_parameters():
    net = MLP("sigmoid")
    assert sum(p.numel() for p in net.parameters()) == 136_074
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 128), (128, 256), (256, 10)]
    assert isinstance(net[0], torch.nn.Flatten) and isinstance(net[2], torch.nn.Sigmoid)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds(activation):
    net = MLP(activation)
    logits = net(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    extra = 2 if activation == "prelu" else 0  # one learnable slope per hidden layer
    assert sum(p.numel() for p in net.parameters()) == 136_074 + extra


def test_an_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="relu, tanh"):
        MLP("sigmod")


def test_the_lists_of_choices_are_complete():
    assert set(OPTIMIZERS) == {"sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "adadelta"}
    assert set(SCHEDULERS) == {"none", "step", "cosine", "onecycle", "plateau"}
    assert {
        "sigmoid",
        "relu",
        "tanh",
        "leaky_relu",
        "prelu",
        "rrelu",
        "elu",
        "gelu",
        "silu",
    } <= set(ACTIVATIONS)


def fit_briefly(overrides, data_dir, tmp_path):
    cfg = compose(
        [
            f"data.data_dir={data_dir}",
            "data.val_size=128",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
            "logger=none",
            "~callbacks.model_checkpoint",
            "~callbacks.last_checkpoint",
            "+trainer.enable_checkpointing=false",
            *overrides,
        ],
        tmp_path,
    )
    datamodule, model, trainer = build(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=datamodule)
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return cfg, trainer, changed


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_config_takes_steps(optimizer, fixture_data_dir, tmp_path):
    cfg, trainer, changed = fit_briefly([f"optimizer={optimizer}"], fixture_data_dir, tmp_path)
    assert changed
    assert trainer.global_step == 6
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULERS if s != "none"])
def test_every_scheduler_config_steps_the_learning_rate(scheduler, fixture_data_dir, tmp_path):
    cfg, trainer, changed = fit_briefly(
        [f"scheduler={scheduler}", "scheduler.step_size=1" if scheduler == "step" else "seed=42"],
        fixture_data_dir,
        tmp_path,
    )
    assert changed
    assert len(trainer.lr_scheduler_configs) == 1
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if scheduler == "plateau":
        assert trainer.lightning_module.scheduler_monitor == "val/acc"
    else:
        assert lr != pytest.approx(cfg.optimizer.lr)  # it moved away from the base rate


def test_hyperparameters_are_plain_data(fixture_data_dir, tmp_path):
    cfg = compose(
        [f"data.data_dir={fixture_data_dir}", "optimizer=adam", "scheduler=cosine"], tmp_path
    )
    _, model, _ = build(cfg)
    assert type(model.hparams.optimizer) is dict and type(model.hparams.scheduler) is dict
    assert model.hparams.optimizer["_target_"] == "torch.optim.Adam"
    assert model.hparams.scheduler["T_max"] == 10  # interpolations resolved
