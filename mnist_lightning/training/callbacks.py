"""Callbacks of our own; everything else comes from Lightning (see conf/callbacks/). The lesson's
(DataPreview, EpochReport, TestSetReport), and those the train command adds to every Trainer for
exact resume (training/resume.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassPrecision,
    MulticlassRecall,
)

from mnist_lightning.data import NUM_CLASSES, to_model_input
from mnist_lightning.errors import ConfigError
from mnist_lightning.models.metrics import EPOCH_METRICS
from mnist_lightning.training import figures

log = logging.getLogger(__name__)


def tensorboard_writer(trainer: pl.Trainer):
    """The TensorBoard SummaryWriter of the run, or None without a TensorBoard logger."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class DataPreview(pl.Callback):
    """The lesson's look at the data when the fit starts: the first 9 training images titled with
    their labels (samples.png and TensorBoard), and the shape of one batch as the model gets it
    (`x [64, 1, 28, 28] float32, y [64] int64`)."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.shown = False  # once: the learning-rate finder starts a fit of its own

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if self.shown or not trainer.is_global_zero or not hasattr(datamodule, "mnist"):
            return
        self.shown = True
        images, labels = datamodule.mnist["train"]  # the training file, in its own order
        names = datamodule.dataset.classes  # (MNIST's are its digits)
        figure = figures.digit_grid(images[:9], [names[int(label)] for label in labels[:9]])
        figures.publish(
            figure, self.output_dir / "samples.png", tensorboard_writer(trainer), "data/samples"
        )
        # Not drawn from the training loader: that would move the run's place in its epoch.
        images, y = datamodule.splits["train"][: datamodule.hparams.batch_size]
        x = to_model_input(images, datamodule.hparams.normalize)  # as the model gets it
        log.info(
            "one batch: x %s %s, y %s %s",
            list(x.shape),
            str(x.dtype).removeprefix("torch."),
            list(y.shape),
            str(y.dtype).removeprefix("torch."),
        )


class EpochReport(pl.Callback):
    """The run's clock and its plain-text record: the lesson's training loss every N batches,
    one line per epoch with the epoch's metrics and time, and the history that metrics.json and
    the sweep summaries keep: per epoch, and at every validation the images trained on so far,
    the seconds since the fit began and val/acc (saved in checkpoints: a resumed run keeps it).
    An epoch without a validation (trainer.check_val_every_n_epoch) has null val/ metrics."""

    def __init__(self, print_every_n_batches: int = 400) -> None:
        self.every = print_every_n_batches
        self.history: dict[str, list[float]] = {}
        self.epoch_started = self.fit_started = 0.0
        self.elapsed_in_epoch = self.elapsed_in_fit = 0.0  # restored from a checkpoint
        self.images = 0  # trained on so far, by every process
        self.training_started_at: float | None = None  # wall clock, for start-up measurements
        self.validated = False  # in this epoch: else callback_metrics hold an earlier epoch's val/

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training_started_at = time.time()
        # Resumed in the middle of an epoch (no on_train_epoch_start): its clock goes on.
        self.epoch_started = time.perf_counter() - self.elapsed_in_epoch
        self.fit_started = time.perf_counter() - self.elapsed_in_fit

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_started = time.perf_counter()
        self.validated = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[1]) * trainer.world_size
        if self.every and (batch_idx + 1) % self.every == 0 and trainer.is_global_zero:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            # One host sync per N batches, as the lesson's loss.item().
            log.info(
                "loss: %.6f  [batch %4d/%d]",
                float(loss),
                batch_idx + 1,
                trainer.num_training_batches,
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
            return
        self.validated = True
        seconds = time.perf_counter() - self.fit_started
        point = {"images": self.images, "seconds": round(seconds, 3)}
        point["val/acc"] = round(float(trainer.callback_metrics["val/acc"]), 6)
        for name, value in point.items():
            self.history.setdefault(f"val_check/{name}", []).append(value)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's validation, so one line holds both.
        if trainer.current_epoch < len(self.history.get("epoch_seconds", [])):
            # Recorded already: Lightning runs the end of the epoch a checkpoint was saved in
            # again when a run bounded by max_steps resumes from it.
            return
        seconds = time.perf_counter() - self.epoch_started
        measured = {
            name: round(float(trainer.callback_metrics[name]), 6)
            for name in EPOCH_METRICS
            if name in trainer.callback_metrics and (self.validated or not name.startswith("val/"))
        }
        epoch_seconds = self.history.setdefault("epoch_seconds", [])
        for name in measured:  # one entry per epoch in every list, null where not measured
            self.history.setdefault(name, [None] * len(epoch_seconds))
        epoch_seconds.append(round(seconds, 3))
        for name in EPOCH_METRICS:
            if name in self.history:
                self.history[name].append(measured.get(name))
        if trainer.is_global_zero:
            shown = "  ".join(f"{name} {value:.4f}" for name, value in measured.items())
            epochs = f"/{trainer.max_epochs}" if trainer.max_epochs > 0 else ""  # -1: no limit
            log.info("epoch %d%s  %s  (%.1f s)", trainer.current_epoch + 1, epochs, shown, seconds)

    def state_dict(self) -> dict:
        now = time.perf_counter()
        return {
            "history": self.history,
            "elapsed_in_epoch": now - self.epoch_started if self.epoch_started else 0.0,
            "elapsed_in_fit": now - self.fit_started if self.fit_started else 0.0,
            "images": self.images,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict.get("history", {})
        self.elapsed_in_epoch = state_dict.get("elapsed_in_epoch", 0.0)
        self.elapsed_in_fit = state_dict.get("elapsed_in_fit", 0.0)
        self.images = state_dict.get("images", 0)


class TestSetReport(pl.Callback):
    """After testing: per-class precision/recall/accuracy, the confusion matrix and a grid of
    misclassified digits titled `pred/true`; figures saved to `output_dir` and TensorBoard."""

    def __init__(self, output_dir: str, max_misclassified: int = 36) -> None:
        self.output_dir = Path(output_dir)
        self.max_misclassified = max_misclassified
        per_class = {"num_classes": NUM_CLASSES, "average": None, "validate_args": False}
        self.per_class = MetricCollection(
            {
                "precision": MulticlassPrecision(**per_class),
                "recall": MulticlassRecall(**per_class),
                "accuracy": MulticlassAccuracy(**per_class),
            }
        )
        self.confusion = MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False)
        self.wrong: list[tuple[torch.Tensor, int, int]] = []
        self.results: dict = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.confusion = self.confusion.to(pl_module.device)
        self.per_class = self.per_class.to(pl_module.device)
        self.confusion.reset()
        self.per_class.reset()
        self.wrong = []

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, targets = batch
        preds = outputs["preds"]
        self.confusion.update(preds, targets)
        self.per_class.update(preds, targets)
        if len(self.wrong) < self.max_misclassified:
            for i in torch.nonzero(preds != targets).flatten().tolist():
                self.wrong.append((images[i].detach().cpu(), int(preds[i]), int(targets[i])))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        matrix = self.confusion.compute().cpu()
        per_class = {
            name: [round(float(v), 6) for v in values]
            for name, values in self.per_class.compute().items()
        }
        self.results = {"per_class": per_class, "confusion_matrix": matrix.tolist()}
        if not trainer.is_global_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        wrong = self.wrong[: self.max_misclassified]
        # The dataset's class names (MNIST's digits), shortened to fit under a cell.
        dataset = getattr(trainer.datamodule, "dataset", None)
        names = [str(c)[:12] for c in getattr(dataset, "classes", range(NUM_CLASSES))]
        self.results["classes"] = names
        confusion_figure, axes = self.confusion.plot(val=matrix, labels=names)
        if max(len(n) for n in names) > 2:
            axes.tick_params(axis="x", labelrotation=45)
        axes.set_title(f"test set confusion matrix ({int(matrix.sum()):,} images)")
        confusion_figure.set_layout_engine("none")  # constrained layout doubles the draw time
        made = {"confusion_matrix": confusion_figure}
        if wrong:
            made["misclassified"] = figures.digit_grid(
                torch.stack([image for image, _, _ in wrong]),
                [f"{names[pred]}/{names[true]}" for _, pred, true in wrong],
                columns=6,
            )
        writer = tensorboard_writer(trainer)
        for name, figure in made.items():
            figures.publish(figure, self.output_dir / f"{name}.png", writer, f"test/{name}")


# --- what exact resume needs around a checkpoint (training/resume.py) ----------------------


class ExactResumeMetrics(pl.Callback):
    """The model's training metrics (their sums so far) and its best validation accuracy go into
    every checkpoint, so that a run resumed, even mid-epoch, reports what an uninterrupted one
    would. Set in `setup`, before Lightning restores a checkpoint."""

    METRICS = ("train_loss", "train_acc", "val_acc_best")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name in self.METRICS:
            getattr(pl_module, name).persistent(True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning resets them at each epoch's end too; this also drops what a checkpoint saved
        # at an epoch's end carried over (a mid-epoch resume skips this hook and keeps its sums).
        pl_module.train_loss.reset()
        pl_module.train_acc.reset()


class OneCycleFits(pl.Callback):
    """A one-cycle schedule resumed keeps the length it was built for (its state holds it): a run
    resumed with more steps would step past its end, so it is refused in one line."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            steps = trainer.estimated_stepping_batches
            if total is not None and total < steps:
                raise ConfigError(
                    f"scheduler=onecycle was built for {total:,} steps and this run now has "
                    f"{steps:,}: a cycle begun cannot be stretched. Finish the run with its own "
                    "trainer.max_epochs, or start a new run with the epochs you want."
                )


class LogsWithCheckpoints(pl.Callback):
    """The loggers write out what they hold before each checkpoint is saved: a run killed after
    the checkpoint resumes from it, and the logs must already hold every row up to it (the CSV
    logger buffers rows, TensorBoard flushes every two minutes)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            logger.save()


class RestoreWatch(pl.Callback):
    """Whether a fit got past restoring its checkpoint: a failure before that is the
    checkpoint's (run.fit says so in one line)."""

    def __init__(self) -> None:
        self.restored = False

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restored = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restored = True
