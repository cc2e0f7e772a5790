"""Lightning as its users know it: every Trainer flag and tool keeps its documented meaning.

Each test trains on the fixture's 512 training images (batches of 16 or 64) and checks what
Lightning's documentation promises for the flag, not merely that it runs.
"""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mnist_lightning.data import to_model_input
from mnist_lightning.doors.checkpoints import read_checkpoint
from mnist_lightning.errors import ConfigError
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.train import train
from mnist_lightning.training.check import check
from mnist_lightning.training.results import final_metrics
from mnist_lightning.training.run import build
from tests.conftest import FAST, compose, load_fixture

# 512 training images in batches of 16: 32 optimizer steps an epoch.
SMALL_BATCHES = ["data.val_size=128", "data.batch_size=16", "trainer.max_epochs=1"]


def fit(overrides, data_dir, tmp_path, callbacks=()):
    cfg = compose([f"data.data_dir={data_dir}", *FAST, *overrides], tmp_path)
    pl.seed_everything(0)
    datamodule, model, trainer = build(check(cfg))
    trainer.callbacks += list(callbacks)
    trainer.fit(model, datamodule=datamodule)
    return cfg, model, trainer


class ParameterSteps(pl.Callback):
    """The size of each optimizer step: the weights before it, and after it."""

    def __init__(self):
        self.before, self.norms = None, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.before is not None:
            deltas = [
                p.detach() - b for p, b in zip(pl_module.parameters(), self.before, strict=True)
            ]
            self.norms.append(
                float(torch.linalg.vector_norm(torch.cat([d.flatten() for d in deltas])))
            )
            self.before = None


def test_gradient_clipping_clips(fixture_data_dir, tmp_path):
    """SGD with lr 1 moves the weights by exactly the (clipped) gradient."""
    steps = {}
    for name, extra in (("free", []), ("clipped", ["+trainer.gradient_clip_val=0.05"])):
        recorder = ParameterSteps()
        fit(
            [*SMALL_BATCHES, "optimizer.lr=1.0", "+trainer.limit_train_batches=8", *extra],
            fixture_data_dir,
            tmp_path / name,
            [recorder],
        )
        steps[name] = recorder.norms
    assert len(steps["clipped"]) == 8
    assert max(steps["clipped"]) <= 0.05 * (1 + 1e-4)
    assert max(steps["free"]) > 0.2  # without clipping the first steps are far larger


def test_accumulating_gradients_takes_a_quarter_of_the_optimizer_steps(fixture_data_dir, tmp_path):
    batches = []

    class Batches(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            batches.append(trainer.global_step)

    _, _, trainer = fit(
        [*SMALL_BATCHES, "+trainer.accumulate_grad_batches=4"],
        fixture_data_dir,
        tmp_path,
        [Batches()],
    )
    assert len(batches) == 32 and trainer.global_step == 8
    assert batches[:8] == [0, 0, 0, 1, 1, 1, 1, 2]  # a step after every 4th batch


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_step_loss_is_written_as_if_logged_at_every_batch(
    accumulate, fixture_data_dir, tmp_path, monkeypatch
):
    """The step loss is logged only when Lightning's loggers write (a self.log call costs a
    quarter of the step; training/monitors.py): what is written must be what a self.log at
    every batch gives."""
    from mnist_lightning.training import monitors

    overrides = [
        *SMALL_BATCHES,
        "trainer.max_epochs=2",
        "logger=csv",
        "trainer.log_every_n_steps=3",
        f"+trainer.accumulate_grad_batches={accumulate}",
    ]

    def written(folder) -> list[tuple[int, float]]:
        fit(overrides, fixture_data_dir, folder)
        with (folder / "metrics.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/loss_step")]
        return [(int(r["step"]), float(r["train/loss_step"])) for r in rows]

    gated = written(tmp_path / "gated")
    monkeypatch.setattr(monitors, "loggers_write_at", lambda trainer, step: True)
    assert gated == written(tmp_path / "every_batch")
    assert len(gated) == (64 // accumulate) // 3


@pytest.mark.parametrize("limit, steps", [(10, 10), (0.25, 8)])
def test_limit_train_batches_limits_the_steps_of_an_epoch(limit, steps, fixture_data_dir, tmp_path):
    _, _, trainer = fit(
        [*SMALL_BATCHES, "trainer.max_epochs=2", f"+trainer.limit_train_batches={limit}"],
        fixture_data_dir,
        tmp_path,
    )
    assert trainer.num_training_batches == steps and trainer.global_step == 2 * steps


class ValidationSteps(pl.Callback):
    def __init__(self):
        self.steps = []

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


@pytest.mark.parametrize(
    "interval, expected",
    [("0.25", [8, 16, 24, 32]), ("10", [10, 20, 30])],  # a fraction of the epoch, or batches
)
def test_val_check_interval_validates_at_those_steps(
    interval, expected, fixture_data_dir, tmp_path
):
    recorder = ValidationSteps()
    fit(
        [*SMALL_BATCHES, f"+trainer.val_check_interval={interval}"],
        fixture_data_dir,
        tmp_path,
        [recorder],
    )
    assert recorder.steps == expected


def test_validating_every_other_epoch_steps_a_plateau_schedule_there_and_leaves_gaps(
    fixture_data_dir, tmp_path
):
    """check_val_every_n_epoch=2: an epoch without a validation has no val/ metrics (not the
    last validation's again), and a schedule on val/acc must step where it was measured."""
    overrides = ["trainer.max_epochs=4", "+trainer.check_val_every_n_epoch=2", "scheduler=plateau"]
    refused = compose([f"data.data_dir={fixture_data_dir}", *FAST, *overrides], tmp_path / "no")
    with pytest.raises(ConfigError, match="step the scheduler as often, scheduler.frequency=2"):
        train(refused)
    # A rate too small to move val/acc, and patience 0: the second validation halves it.
    more = ["scheduler.frequency=2", "scheduler.patience=0", "optimizer.lr=1e-5"]
    _, _, trainer = fit([*overrides, *more], fixture_data_dir, tmp_path / "run")
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-6)
    metrics = final_metrics(trainer, fit_seconds=0.0)
    history = metrics["history"]
    assert len(history["train/loss"]) == len(history["val/loss"]) == 4
    assert history["val/acc"][0] is None and history["val/acc"][2] is None
    assert all(history["val/acc"][i] > 0 for i in (1, 3)) and len(history["val_check/val/acc"]) == 2
    assert metrics["val/acc"] == history["val/acc"][3]


def test_a_plateau_schedule_by_steps_steps_at_each_validation(fixture_data_dir, tmp_path):
    """Validation every 8 of the epoch's 32 batches, the schedule stepped as often: 4 steps, and
    (a rate too small to move val/acc, patience 0) the rate halved at all but the first."""
    steps = ["scheduler.interval=step", "+trainer.val_check_interval=8", "scheduler.frequency=8"]
    more = ["scheduler=plateau", "scheduler.patience=0", "optimizer.lr=1e-5", *steps]
    cfg, _, trainer = fit([*SMALL_BATCHES, *more], fixture_data_dir, tmp_path)
    check(cfg)  # the train command's check lets it through
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1.25e-6)


def test_a_step_interval_learning_rate_monitor_writes_every_log_every_n_steps(
    fixture_data_dir, tmp_path
):
    fit(
        [
            *SMALL_BATCHES,
            "logger=csv",
            "callbacks.learning_rate_monitor.logging_interval=step",
            "trainer.log_every_n_steps=4",
            "scheduler=cosine",
            "scheduler.interval=step",
            "scheduler.T_max=32",
        ],
        fixture_data_dir,
        tmp_path,
    )
    with (tmp_path / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-SGD")]
    # Lightning writes at every 4th step (its step count starts at 0); the schedule moves.
    assert [int(r["step"]) for r in rows] == list(range(3, 32, 4))
    rates = [float(r["lr-SGD"]) for r in rows]
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]
    # The training loss per step is written at the same steps.
    with (tmp_path / "metrics.csv").open() as f:
        loss_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert loss_steps == list(range(3, 32, 4))


def test_lr_find_suggests_a_rate_and_the_fit_trains_with_it(fixture_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    metrics = train(
        compose(
            [
                f"data.data_dir={fixture_data_dir}",
                *FAST,
                "data.batch_size=16",
                "lr_find=true",
                "optimizer=adam",
                "trainer.max_epochs=2",
            ],
            run_dir,
        )
    )
    saved = (run_dir / "run_config.yaml").read_text()
    import yaml

    lr = yaml.safe_load(saved)["config"]["optimizer"]["lr"]
    assert lr != pytest.approx(1e-3)  # the suggestion replaced adam's configured rate
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == pytest.approx(lr)
    [group] = checkpoint["optimizer_states"][0]["param_groups"]
    assert group["lr"] == pytest.approx(lr)  # the optimizer that trained used it
    assert (run_dir / "lr_find.png").stat().st_size > 5_000
    assert metrics["global_step"] == 64  # the finder's own steps were undone
    assert [p.name for p in run_dir.iterdir() if p.suffix == ".ckpt"] == []  # its own removed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "lr_find/plot" in events.Tags()["images"]
    assert events.Scalars("lr_find/suggestion")[0].value == pytest.approx(lr)


def test_the_classifier_trains_with_a_plain_dataloader_and_a_bare_trainer(fixture_data_dir):
    images, labels = load_fixture(fixture_data_dir)["train"]
    loader = DataLoader(TensorDataset(to_model_input(images), labels), batch_size=64, shuffle=True)
    model = MNISTClassifier(activation="relu")
    trainer = pl.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, loader)
    assert trainer.global_step == 3 * 10  # 640 images in batches of 64
    assert float(trainer.callback_metrics["train/acc"]) > 0.5  # far above chance (0.1)


def test_ema_weights_are_the_ones_validated_checkpointed_and_tested(fixture_data_dir, tmp_path):
    metrics = train(
        compose(
            [
                f"data.data_dir={fixture_data_dir}",
                *FAST,
                "trainer.max_epochs=2",
                "logger=none",
                "+callbacks.weight_averaging._target_=lightning.pytorch.callbacks.EMAWeightAveraging",
                "+callbacks.weight_averaging.decay=0.9",
            ],
            tmp_path,
        )
    )
    checkpoint = read_checkpoint(tmp_path / metrics["test_checkpoint"])
    average, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert not torch.equal(average["net.hidden1.weight"], current["net.hidden1.weight"])

    images, labels = load_fixture(fixture_data_dir)["test"]
    model = MNISTClassifier().eval()

    def test_loss(state) -> float:
        model.load_state_dict(state)
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(to_model_input(images)), labels))

    assert metrics["test/loss"] == pytest.approx(test_loss(average), rel=1e-5)
    assert metrics["test/loss"] != pytest.approx(test_loss(current), rel=1e-3)


def test_max_steps_stops_inside_an_epoch(fixture_data_dir, tmp_path):
    _, _, trainer = fit([*SMALL_BATCHES, "+trainer.max_steps=5"], fixture_data_dir, tmp_path)
    assert trainer.global_step == 5
    assert "train/loss" in trainer.callback_metrics  # the partial epoch is still reported


def test_detect_anomaly_trains(fixture_data_dir, tmp_path):
    _, _, trainer = fit(
        [*SMALL_BATCHES, "+trainer.detect_anomaly=true", "+trainer.limit_train_batches=4"],
        fixture_data_dir,
        tmp_path,
    )
    assert trainer.global_step == 4


# --- conf/debug presets -------------------------------------------------------------------


def test_debug_fast_runs_one_batch_of_each_split(fixture_data_dir, tmp_path):
    metrics = train(compose([f"data.data_dir={fixture_data_dir}", *FAST, "debug=fast"], tmp_path))
    assert metrics["global_step"] == 1 and "test/acc" in metrics
    assert not (tmp_path / "checkpoints").exists()  # fast_dev_run writes no checkpoint


def test_debug_overfit_learns_one_batch_by_heart(fixture_data_dir, tmp_path):
    seen = []

    class Labels(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(batch[1].clone())

    _, _, trainer = fit(
        ["debug=overfit", "optimizer=adam", "model.activation=relu", "trainer.max_epochs=25"],
        fixture_data_dir,
        tmp_path,
        [Labels()],
    )
    assert trainer.global_step == 25 and len(seen) == 25  # one batch an epoch
    assert all(torch.equal(labels, seen[0]) for labels in seen)  # the same batch every time
    assert float(trainer.callback_metrics["train/acc"]) == 1.0


def test_debug_limit_runs_one_short_epoch(fixture_data_dir, tmp_path):
    _, _, trainer = fit(["debug=limit", "data.batch_size=16"], fixture_data_dir, tmp_path)
    assert trainer.global_step == 20 and trainer.current_epoch == 1


def test_debug_profile_writes_the_simple_profilers_report(fixture_data_dir, tmp_path):
    fit(["debug=profile"], fixture_data_dir, tmp_path)
    report = (tmp_path / "fit-profile.txt").read_text()
    assert (
        "run_training_batch" in report and "[Strategy]SingleDeviceStrategy.training_step" in report
    )


def test_metrics_json_keeps_global_step_and_epoch_times(fixture_data_dir, tmp_path):
    metrics = train(
        compose([f"data.data_dir={fixture_data_dir}", *FAST, "trainer.max_epochs=2"], tmp_path)
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["global_step"] == metrics["global_step"] == 16
    assert len(saved["history"]["epoch_seconds"]) == 2
    assert len(saved["history"]["train/loss"]) == len(saved["history"]["val/acc"]) == 2
    assert (tmp_path / saved["test_checkpoint"]).is_file()  # a path inside the run folder


def test_stochastic_weight_averaging_moves_the_rate_and_averages(fixture_data_dir, tmp_path):
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1, annealing_epochs=1)
    _, model, trainer = fit(
        ["trainer.max_epochs=3", "logger=none"], fixture_data_dir, tmp_path, [swa]
    )
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)  # from 0.2
    assert swa.n_averaged is not None and int(swa.n_averaged) >= 2  # averaged over epochs


@pytest.mark.parametrize("max_epochs", ["-1", "null"])
def test_no_epoch_limit_trains_until_max_steps(max_epochs, fixture_data_dir, tmp_path, caplog):
    # Lightning's meanings: -1 is no epoch limit; null is none where max_steps bounds the run. A
    # loss that stops falling (a tiny rate) must not end it: that is no divergence.
    overrides = [*SMALL_BATCHES, f"trainer.max_epochs={max_epochs}", "+trainer.max_steps=100"]
    overrides += ["optimizer.lr=1e-9", "logger=none"]
    caplog.set_level("INFO", logger="mnist_lightning")
    metrics = train(compose([f"data.data_dir={fixture_data_dir}", *overrides], tmp_path))
    # 32 steps an epoch: the fourth is cut short, and counted.
    assert metrics["global_step"] == 100 and metrics["epochs"] == 4
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 4 and lines[0].startswith("epoch 1  train/loss")  # no "/-1"


def test_a_one_cycle_schedule_needs_an_end(fixture_data_dir, tmp_path):
    cfg = compose(
        [f"data.data_dir={fixture_data_dir}", "scheduler=onecycle", "trainer.max_epochs=-1"],
        tmp_path,
    )
    with pytest.raises(ConfigError, match=r"^scheduler=onecycle spreads one cycle .* no end"):
        check(cfg)


def test_without_checkpointing_the_final_weights_are_tested(fixture_data_dir, tmp_path):
    off = ["+trainer.enable_checkpointing=false", "~callbacks.model_checkpoint"]
    off += ["~callbacks.last_checkpoint", "~callbacks.graceful_interrupt", "logger=none"]
    cfg = compose([f"data.data_dir={fixture_data_dir}", *FAST, *off], tmp_path)
    metrics = train(cfg)
    assert metrics["test_checkpoint"] == "final weights" and "test/acc" in metrics
    assert not (tmp_path / "checkpoints").exists()


def test_a_training_step_that_skips_its_batch_logs_no_step_loss_for_it(tmp_path):
    """Lightning lets `training_step` return None to skip a batch: the step loss (a callback,
    training/monitors.py) is logged for the batches that trained, and a skipped one is no
    error."""
    from lightning.pytorch.loggers import CSVLogger

    from mnist_lightning.training.monitors import StepLossLogger

    class SkipsOddBatches(MNISTClassifier):
        def training_step(self, batch, batch_idx: int):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    batches = DataLoader(TensorDataset(to_model_input(images), torch.randint(0, 10, (64,))), 8)
    trainer = pl.Trainer(
        max_epochs=1,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[StepLossLogger()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(SkipsOddBatches(), batches)
    with (tmp_path / "metrics.csv").open() as f:
        logged = [row["train/loss_step"] for row in csv.DictReader(f) if row.get("train/loss_step")]
    # (Lightning writes a skipped step's row with the value logged before it, as it would for a
    # self.log in training_step itself.)
    assert len(set(logged)) == 4  # the losses of the 4 batches that trained
