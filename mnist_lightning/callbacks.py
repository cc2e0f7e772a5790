"""Callbacks of our own; everything else comes from Lightning (see conf/callbacks/)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from mnist_lightning.errors import UserError

log = logging.getLogger(__name__)

EPOCH_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")


def step_losses(outputs) -> torch.Tensor:
    """The per-optimizer-step losses a training step returned, as a 1-D tensor."""
    loss = outputs["loss"] if isinstance(outputs, dict) else outputs
    return loss.detach().reshape(-1)


def log_at_step(trainer: pl.Trainer, values: dict[str, torch.Tensor], step: int) -> None:
    """Write step values straight to the loggers at an optimizer step. `self.log` would keep only
    a loader item's last value (an item spans several steps); callers do this every N steps, so
    the sync of the float conversion is rare."""
    if not trainer.is_global_zero or not trainer.loggers:
        return
    scalars = {name: float(value) for name, value in values.items()}
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)


def tensorboard_writer(trainer: pl.Trainer):
    """The TensorBoard SummaryWriter of the run, or None without a TensorBoard logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ConsoleReport(pl.Callback):
    """Plain log lines a person or a CI log can read: the lesson's training loss every N
    batches, and one line per epoch with the epoch's metrics and time."""

    def __init__(self, print_every_n_batches: int = 400) -> None:
        self.every = print_every_n_batches
        self.epoch_start = 0.0
        self.epoch_first_step = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start = time.perf_counter()
        self.epoch_first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # A loader item may hold several optimizer batches (`losses`, one per step): count
        # batches as the lesson did, by optimizer step.
        if not self.every or not trainer.is_global_zero:
            return
        losses = step_losses(outputs)
        done = trainer.global_step - self.epoch_first_step  # batches finished this epoch
        first = done - len(losses) + 1
        numbers = range(-(-first // self.every) * self.every, done + 1, self.every)
        if not numbers:
            return
        datamodule = getattr(trainer, "datamodule", None)
        total = (
            datamodule.steps_per_epoch()
            if hasattr(datamodule, "steps_per_epoch")
            else trainer.num_training_batches
        )
        for number in numbers:
            # .item() syncs with the device; once per N batches costs nothing measurable.
            log.info("loss: %.6f  [batch %4d/%d]", losses[number - first].item(), number, total)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the epoch's validation, so one line holds both.
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(
            f"{name} {float(metrics[name]):.4f}" for name in EPOCH_METRICS if name in metrics
        )
        seconds = time.perf_counter() - self.epoch_start
        log.info(
            "epoch %d/%d  %s  (%.1f s)",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            shown,
            seconds,
        )


class EpochHistory(pl.Callback):
    """Per-epoch metrics and times, kept for metrics.json and sweep summaries (any logger)."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch_start = 0.0
        self.first_step_at: float | None = None  # wall clock, for start-up measurements

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = round(time.perf_counter() - self.epoch_start, 3)  # training + validation
        self.history.setdefault("epoch_seconds", []).append(seconds)
        for name in EPOCH_METRICS:
            if name in trainer.callback_metrics:
                self.history.setdefault(name, []).append(
                    round(float(trainer.callback_metrics[name]), 6)
                )

    def state_dict(self) -> dict:
        return {"history": self.history}  # survives a resume from a checkpoint

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict.get("history", {})


class GradientMonitor(pl.Callback):
    """Per-layer gradient norms every N steps and weight histograms every epoch, so that the
    lesson's vanishing gradients (sigmoid against ReLU) can be seen as curves."""

    def __init__(self, every_n_steps: int = 50, histograms: bool = True) -> None:
        self.every = every_n_steps
        self.histograms = histograms

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.every or trainer.global_step % self.every or not trainer.is_global_zero:
            return
        from lightning.pytorch.utilities import grad_norm

        log_at_step(trainer, grad_norm(pl_module.net, norm_type=2), trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if self.histograms and writer is not None and trainer.is_global_zero:
            for name, parameter in pl_module.net.named_parameters():
                writer.add_histogram(
                    f"weights/{name}", parameter.detach().cpu(), trainer.current_epoch
                )


class TestSetReport(pl.Callback):
    """After testing: per-class precision/recall/accuracy, the confusion matrix and a grid of
    misclassified digits titled `pred/true`; figures saved to `output_dir` and TensorBoard."""

    def __init__(self, output_dir: str, max_misclassified: int = 36) -> None:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
            MulticlassPrecision,
            MulticlassRecall,
        )

        self.output_dir = Path(output_dir)
        self.max_misclassified = max_misclassified
        per_class = {"num_classes": 10, "average": None, "validate_args": False}
        self.per_class = MetricCollection(
            {
                "precision": MulticlassPrecision(**per_class),
                "recall": MulticlassRecall(**per_class),
                "accuracy": MulticlassAccuracy(**per_class),
            }
        )
        self.confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
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
        from mnist_lightning import figures

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
        confusion_figure, axes = self.confusion.plot(val=matrix, labels=[str(d) for d in range(10)])
        axes.set_title(f"test set confusion matrix ({int(matrix.sum()):,} images)")
        confusion_figure.set_layout_engine("none")  # constrained layout doubles the draw time
        made = {"confusion_matrix": confusion_figure}
        if wrong:
            made["misclassified"] = figures.digit_grid(
                torch.stack([image for image, _, _ in wrong]),
                [f"{pred}/{true}" for _, pred, true in wrong],
                columns=6,
            )
        writer = tensorboard_writer(trainer)
        for name, figure in made.items():
            figures.publish(figure, self.output_dir / f"{name}.png", writer, f"test/{name}")


class DivergedLoss(UserError):
    """Training diverged: the loss became NaN, infinite, or absurdly large."""


class DivergenceGuard(pl.Callback):
    """Stop training within a few steps of the loss becoming NaN/inf or exploding past
    `max_loss` (cross-entropy over 10 classes starts near ln 10 = 2.3; a sigmoid network at
    lr 1e4 saturates and sits at finite losses of 1e5), before any checkpoint could save the
    broken weights, with a message naming the step, the loss and the likely cause.

    The finiteness test is accumulated on the device and read every `check_every_n_steps` steps
    (and before each validation, which is where checkpoints are written), so a GPU is not
    synchronised on every step.
    """

    def __init__(self, check_every_n_steps: int = 10, max_loss: float = 100.0) -> None:
        self.every = max(1, check_every_n_steps)
        self.max_loss = max_loss
        # (first step, the losses of the steps from there) for each item since the last check
        self.recent: list[tuple[int, torch.Tensor]] = []
        self.unchecked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        losses = step_losses(outputs)  # one per optimizer step of this item
        self.recent.append((trainer.global_step - len(losses) + 1, losses))
        self.unchecked += len(losses)
        if self.unchecked >= self.every:
            self._check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if not self.recent:
            return
        losses = torch.cat([losses for _, losses in self.recent])
        diverged = ~torch.isfinite(losses) | (losses > self.max_loss)
        bad = torch.nonzero(diverged).flatten().tolist()  # one sync per check
        if not bad:
            self.recent, self.unchecked = [], 0
            return
        steps = [first + i for first, item in self.recent for i in range(len(item))]
        step, loss = steps[bad[0]], losses[bad[0]]
        optimizer = trainer.optimizers[0]
        value = float(loss)
        what = f"{value}" if not torch.isfinite(loss) else f"{value:.4g} (above {self.max_loss:g})"
        raise DivergedLoss(
            f"training stopped at step {step} (epoch {trainer.current_epoch + 1}): the loss became "
            f"{what}. The learning rate is probably too high ({type(optimizer).__name__} "
            f"lr={optimizer.param_groups[0]['lr']:g}); try a smaller optimizer.lr. The best checkpoint "
            "so far was not overwritten."
        )


class InterruptCheckpoint(pl.Callback):
    """On Ctrl-C, save `last.ckpt` so nothing finished is lost, and say how to resume."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return  # a crashed or diverged model is not worth saving over last.ckpt
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        run_dir = self.dirpath.parent
        log.warning(
            "interrupted at epoch %d, step %d; saved %s\nresume with: python -m mnist_lightning.train resume=%s",
            trainer.current_epoch + 1,
            trainer.global_step,
            path,
            run_dir,
        )


class StepwiseEMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, updated after every optimizer step.

    Lightning's WeightAveraging updates in `on_train_batch_end`, once per loader item; an item of
    MNISTDataModule holds `batches_per_fetch` optimizer steps, so a decay meant per step would
    act per 32 steps. The steps inside an item are averaged here, just before the next step
    changes the weights; Lightning's own hook still takes the item's last step.
    """

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # The weights now are those after step `global_step` (0: not trained yet).
        step = trainer.global_step
        if self._average_model is None or step <= self._latest_update_step:
            return
        if self.should_update(step_idx=step - 1):  # Lightning's indexing: step 1 has index 0
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = step
