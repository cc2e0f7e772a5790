"""The network, and every optimizer and scheduler config."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.doors.settings import is_plain
from mnist_lightning.models.networks import ACTIVATIONS, MLP
from mnist_lightning.models.optim import OPTIMIZERS, SCHEDULERS
from mnist_lightning.training.check import check
from mnist_lightning.training.run import build
from tests.conftest import compose

CONF = Path(CONFIG_DIR)
OPTIMIZER_CONFS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
SCHEDULER_CONFS = sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml"))


def test_the_lessons_network_has_136074_parameters():
    net = MLP("sigmoid")
    assert sum(p.numel() for p in net.parameters()) == 136_074
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 128), (128, 256), (256, 10)]
    assert isinstance(net[0], torch.nn.Flatten) and isinstance(net[2], torch.nn.Sigmoid)


@pytest.mark.parametrize("activation", sorted(set(ACTIVATIONS) - {"maxout"}))
def test_every_activation_builds(activation):
    net = MLP(activation)
    logits = net(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    extra = 2 if activation == "prelu" else 0  # one learnable slope per hidden layer
    assert sum(p.numel() for p in net.parameters()) == 136_074 + extra


@pytest.mark.parametrize("pieces", [2, 3])
def test_maxout_units_are_the_largest_of_their_pieces(pieces):
    from mnist_lightning.models.networks import CNN, Maxout

    net = MLP("maxout", maxout_pieces=pieces)
    widths = [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
    assert widths == [(784, 128 * pieces), (128, 256 * pieces), (256, 10)]  # the lesson's widths
    assert sum(p.numel() for p in net.parameters()) == (
        784 * 128 * pieces + 128 * pieces + 128 * 256 * pieces + 256 * pieces + 2570
    )
    x = torch.randn(4, 6 * pieces)
    expected = torch.stack(
        [x[:, i * pieces : (i + 1) * pieces].max(dim=1).values for i in range(6)], 1
    )
    assert torch.equal(Maxout(pieces)(x), expected)
    images = torch.randn(4, 3 * pieces, 5, 5)  # channels, after a convolution
    assert Maxout(pieces)(images).shape == (4, 3, 5, 5)
    cnn = CNN("maxout", maxout_pieces=pieces)
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert cnn.conv1[0].out_channels == 24 * pieces and cnn.conv1[1].num_features == 24 * pieces


def test_maxout_trains(fixture_data_dir, tmp_path):
    _, trainer, changed = fit_briefly(
        ["model.activation=maxout", "model.maxout_pieces=3", "optimizer=adam"],
        fixture_data_dir,
        tmp_path,
    )
    assert changed and trainer.model.net.act1.pieces == 3
    assert float(trainer.callback_metrics["train/loss"]) < 2.2  # below chance's ln 10 = 2.30


def test_an_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="relu, tanh"):
        MLP("sigmod")


def test_the_lists_of_choices_are_complete():
    assert set(OPTIMIZER_CONFS) == {
        "sgd",
        "momentum",
        "adam",
        "adamw",
        "rmsprop",
        "adagrad",
        "adadelta",
    }
    assert set(SCHEDULER_CONFS) == {"none", "step", "cosine", "onecycle", "plateau"}
    # Each option of conf/ names what it configures by its own name, which models/optim.py knows.
    assert set(OPTIMIZERS) == set(OPTIMIZER_CONFS) and set(SCHEDULERS) == set(SCHEDULER_CONFS) - {
        "none"
    }
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
    """Two epochs of 4 steps (batches of 64 of the fixture's 512 training images), no files."""
    cfg = compose(
        [
            f"data.data_dir={data_dir}",
            "data.val_size=128",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=4",
            "+trainer.limit_val_batches=1",
            "logger=none",
            "~callbacks.model_checkpoint",
            "~callbacks.last_checkpoint",
            "~callbacks.graceful_interrupt",
            "+trainer.enable_checkpointing=false",
            *overrides,
        ],
        tmp_path,
    )
    pl.seed_everything(0)
    datamodule, model, trainer = build(check(cfg))
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=datamodule)
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return cfg, trainer, changed


@pytest.mark.parametrize("optimizer", OPTIMIZER_CONFS)
def test_every_optimizer_config_takes_steps(optimizer, fixture_data_dir, tmp_path):
    cfg, trainer, changed = fit_briefly([f"optimizer={optimizer}"], fixture_data_dir, tmp_path)
    assert changed
    assert trainer.global_step == 8
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULER_CONFS if s != "none"])
def test_every_scheduler_config_steps_the_learning_rate(scheduler, fixture_data_dir, tmp_path):
    overrides = {
        "step": ["scheduler.step_size=1"],
        # No epoch can beat the best by 100%: epoch 2 does not improve, the rate halves.
        "plateau": ["scheduler.patience=0", "+scheduler.threshold=1.0"],
    }.get(scheduler, [])
    cfg, trainer, changed = fit_briefly(
        [f"scheduler={scheduler}", *overrides], fixture_data_dir, tmp_path
    )
    assert changed
    [config] = trainer.lr_scheduler_configs
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    base = cfg.optimizer.lr
    if scheduler == "onecycle":
        # The cycle spans exactly the run's optimizer steps, peaking at optimizer.lr.
        assert config.scheduler.total_steps == trainer.global_step == 8
        assert max(config.scheduler.get_last_lr()) < base
        assert config.interval == "step"
    elif scheduler == "plateau":
        assert config.monitor == "val/acc" and lr == pytest.approx(base * 0.5)
    elif scheduler == "step":
        assert lr == pytest.approx(base * cfg.scheduler.gamma**2)  # once per epoch
    else:
        assert lr < base


def test_hyperparameters_are_plain_data(fixture_data_dir, tmp_path):
    cfg = compose(
        [f"data.data_dir={fixture_data_dir}", "optimizer=adam", "scheduler=cosine"], tmp_path
    )
    _, model, _ = build(check(cfg))
    assert type(model.hparams.optimizer) is dict and type(model.hparams.scheduler) is dict
    assert model.hparams.optimizer["name"] == "adam" and model.hparams.net == {"name": "mlp"}
    assert model.hparams.scheduler["T_max"] == 10  # interpolations resolved
    assert is_plain(dict(model.hparams))  # names and numbers: no class, path or object


@pytest.mark.parametrize(
    "interval, frequency, expected_steps",
    # 2 epochs of 4 optimizer steps: Lightning steps the schedule every `frequency` epochs, or
    # every `frequency` batches of an epoch.
    [("epoch", 1, 2), ("epoch", 2, 1), ("step", 1, 8), ("step", 2, 4), ("step", 3, 2)],
)
def test_lightning_steps_the_scheduler_at_its_interval_and_frequency(
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
    assert trainer.global_step == 8
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(cfg.optimizer.lr * cfg.scheduler.gamma**expected_steps)


class StepRecorder(pl.Callback):
    """What a user's callback sees at every training batch: the batch, the loss, the step."""

    def __init__(self):
        self.losses, self.shapes, self.zero_grads = [], [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        x, y = batch
        self.shapes.append((tuple(x.shape), x.dtype, tuple(y.shape), y.dtype))
        self.losses.append(outputs["loss"].detach().clone())

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        self.zero_grads += 1


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
    datamodule, model, trainer = build(check(cfg))
    trainer.callbacks += callbacks
    trainer.fit(model, datamodule=datamodule)
    return datamodule, model, trainer


def test_a_callback_sees_each_batch_of_64_and_its_scalar_loss(fixture_data_dir, tmp_path):
    recorder = StepRecorder()
    _, _, trainer = fit_one_epoch(["data.val_size=128"], [recorder], fixture_data_dir, tmp_path)
    assert trainer.num_training_batches == len(recorder.shapes) == trainer.global_step == 8
    assert recorder.shapes[0] == ((64, 1, 28, 28), torch.float32, (64,), torch.int64)
    assert all(loss.shape == () for loss in recorder.losses)
    assert recorder.zero_grads == 8  # Lightning zeroes the gradients once per step


def test_epoch_losses_are_per_image_means_whatever_the_batch_sizes(fixture_data_dir, tmp_path):
    """540 training images are 8 batches of 64 and one of 28; 100 validation images are
    batches of 64 and 36: a mean of batch means would weigh the small batches too much."""

    from mnist_lightning.data import to_model_input

    recorder = StepRecorder()
    datamodule, model, trainer = fit_one_epoch(
        ["data.val_size=100", "data.eval_batch_size=64"], [recorder], fixture_data_dir, tmp_path
    )
    sizes = [shape[2][0] for shape in recorder.shapes]
    assert sorted(set(sizes)) == [28, 64]
    weighted = sum(float(loss) * n for loss, n in zip(recorder.losses, sizes, strict=True))
    expected = weighted / sum(sizes)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)

    val = datamodule.splits["val"]
    model.eval()
    with torch.no_grad():
        logits = model(to_model_input(val.images))
    direct = torch.nn.functional.cross_entropy(logits, val.labels)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(direct), rel=1e-5)


def test_mixed_precision_trains(fixture_data_dir, tmp_path):
    pl.seed_everything(3)
    _, _, trainer = fit_one_epoch(
        ["data.val_size=128", "trainer.precision=bf16-mixed"], [], fixture_data_dir, tmp_path
    )
    assert trainer.global_step == 8
    assert 0.0 < float(trainer.callback_metrics["train/loss"]) < 3.0
