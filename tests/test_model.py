"""The network, and every optimizer and scheduler config."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
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
            "data.batches_per_fetch=2",  # 512 training images: 4 items of 2 batches of 64
            "+trainer.limit_train_batches=3",  # loader items: 6 optimizer steps per epoch
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
    assert trainer.global_step == 12 and trainer.datamodule.steps_per_epoch() == 6
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
    if scheduler == "onecycle":
        # The cycle spans exactly the run's optimizer steps (not its loader items).
        assert trainer.lr_scheduler_configs[0].scheduler.total_steps == trainer.global_step == 12
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


@pytest.mark.parametrize(
    "interval, frequency, expected_steps",
    [("epoch", 2, 1), ("step", 4, 3)],  # 2 epochs of 6 optimizer steps
)
def test_the_scheduler_steps_every_frequency_epochs_or_steps(
    interval, frequency, expected_steps, fixture_data_dir, tmp_path
):
    cfg, trainer, _ = fit_briefly(
        [
            "scheduler=step",
            "scheduler.step_size=1",
            f"scheduler.interval={interval}",
            f"+scheduler.frequency={frequency}",
        ],
        fixture_data_dir,
        tmp_path,
    )
    assert trainer.global_step == 12
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(cfg.optimizer.lr * cfg.scheduler.gamma**expected_steps)


class StepLosses(pl.Callback):
    """Every optimizer step's loss and batch size, as the training step returned them."""

    def __init__(self):
        self.losses, self.sizes = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses += outputs["loss"].tolist()
        self.sizes += [len(y) for _, y in batch]


def fit_one_epoch(overrides, callbacks, data_dir, tmp_path):
    """One epoch with no logger and only the given callbacks; returns datamodule, model, trainer."""
    cfg = compose(
        [
            f"data.data_dir={data_dir}",
            "trainer.max_epochs=1",
            "logger=none",
            "~callbacks",
            "+trainer.enable_checkpointing=false",
            *overrides,
        ],
        tmp_path,
    )
    datamodule, model, trainer = build(cfg)
    trainer.callbacks += callbacks
    trainer.fit(model, datamodule=datamodule)
    return datamodule, model, trainer


def test_epoch_losses_are_per_image_means_whatever_the_batch_sizes(fixture_data_dir, tmp_path):
    """540 training images are 8 batches of 64 and one of 28; 100 validation images are
    batches of 64 and 36: a mean of batch means would weigh the small batches too much."""

    from mnist_lightning.data import to_model_input

    recorder = StepLosses()
    datamodule, model, trainer = fit_one_epoch(
        ["data.val_size=100", "data.eval_batch_size=64"], [recorder], fixture_data_dir, tmp_path
    )
    assert sorted(set(recorder.sizes)) == [28, 64]
    weighted = sum(loss * n for loss, n in zip(recorder.losses, recorder.sizes, strict=True))
    expected = weighted / sum(recorder.sizes)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)

    val = datamodule.splits["val"]
    model.eval()
    with torch.no_grad():
        logits = model(to_model_input(val.images))
    direct = torch.nn.functional.cross_entropy(logits, val.labels)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(direct), rel=1e-5)


def test_stepwise_ema_averages_after_every_optimizer_step(fixture_data_dir, tmp_path):
    """Loader items of 4 batches: the average must still take each of the 8 steps' weights."""

    from mnist_lightning.callbacks import StepwiseEMA

    class WeightsAfterEachStep(pl.Callback):
        def __init__(self):
            self.after: dict[int, list[torch.Tensor]] = {}

        def _keep(self, trainer, pl_module):
            if trainer.global_step > 0:
                self.after[trainer.global_step] = [
                    p.detach().clone() for p in pl_module.parameters()
                ]

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self._keep(trainer, pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._keep(trainer, pl_module)

    weights = WeightsAfterEachStep()
    _, model, _ = fit_one_epoch(
        ["data.val_size=128", "data.batches_per_fetch=4"],
        [weights, StepwiseEMA(decay=0.5)],
        fixture_data_dir,
        tmp_path,
    )

    assert sorted(weights.after) == list(range(1, 9))
    average = weights.after[1]
    for step in range(2, 9):
        average = [0.5 * a + 0.5 * w for a, w in zip(average, weights.after[step], strict=True)]
    # At the end of training the average replaces the weights.
    for expected, actual in zip(average, model.parameters(), strict=True):
        torch.testing.assert_close(actual, expected)


def test_console_counts_batches_by_optimizer_step_across_loader_items(
    fixture_data_dir, tmp_path, caplog
):
    """Items of 4 batches, a line every 3 batches: batches 3 and 6 of 8, with their own loss."""
    import logging

    from mnist_lightning.callbacks import ConsoleReport

    recorder = StepLosses()
    with caplog.at_level(logging.INFO, logger="mnist_lightning.callbacks"):
        fit_one_epoch(
            ["data.val_size=128", "data.batches_per_fetch=4"],
            [recorder, ConsoleReport(print_every_n_batches=3)],
            fixture_data_dir,
            tmp_path,
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loss:")]
    assert lines == [
        f"loss: {recorder.losses[2]:.6f}  [batch    3/8]",
        f"loss: {recorder.losses[5]:.6f}  [batch    6/8]",
    ]


class StepHooks(pl.Callback):
    """What each per-step hook saw: its name, the step count and whether gradients existed."""

    def __init__(self):
        self.calls = []

    def _record(self, hook, trainer, pl_module):
        has_grads = all(p.grad is not None for p in pl_module.parameters())
        self.calls.append((hook, trainer.global_step, has_grads, pl_module._current_fx_name))

    def on_before_backward(self, trainer, pl_module, loss):
        self._record("on_before_backward", trainer, pl_module)

    def on_after_backward(self, trainer, pl_module):
        self._record("on_after_backward", trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._record("on_before_optimizer_step", trainer, pl_module)


def test_the_direct_step_matches_lightnings_step_path(fixture_data_dir, tmp_path):
    """Same weights to the bit, same step count, same hooks in the same order with the same
    state; a profiler (something the direct step cannot serve) switches to Lightning's path."""
    runs = {}
    for name, extra in (("direct", []), ("lightning", ["+trainer.profiler=simple"])):
        pl.seed_everything(3)
        hooks = StepHooks()
        _, model, trainer = fit_one_epoch(
            ["data.val_size=128", "data.batches_per_fetch=4", "optimizer=momentum", *extra],
            [hooks],
            fixture_data_dir,
            tmp_path / name,
        )
        runs[name] = (model, trainer, hooks.calls)

    (direct, direct_trainer, direct_calls), (plain, plain_trainer, plain_calls) = runs.values()
    assert direct._backward_and_step.direct and not plain._backward_and_step.direct
    assert direct_trainer.global_step == plain_trainer.global_step == 8
    assert direct_calls == plain_calls
    assert [c[:2] for c in direct_calls[:3]] == [
        ("on_before_backward", 0),
        ("on_after_backward", 0),
        ("on_before_optimizer_step", 0),
    ]
    assert len(direct_calls) == 3 * 8
    for a, b in zip(direct.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mixed_precision_takes_lightnings_step_path_and_trains(fixture_data_dir, tmp_path):
    pl.seed_everything(3)
    _, model, trainer = fit_one_epoch(
        ["data.val_size=128", "data.batches_per_fetch=4", "trainer.precision=bf16-mixed"],
        [],
        fixture_data_dir,
        tmp_path,
    )
    assert not model._backward_and_step.direct  # the precision plugin casts and scales
    assert trainer.global_step == 8
    assert 0.0 < float(trainer.callback_metrics["train/loss"]) < 3.0
