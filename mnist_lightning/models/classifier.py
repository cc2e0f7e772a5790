"""MNISTClassifier: the LightningModule that trains the lesson's network (networks.py).

Textbook Lightning: `training_step` takes one `(x, y)` batch and returns its loss; the Trainer
does the backward pass, the optimizer and scheduler steps, accumulation and clipping.
"""

from __future__ import annotations

from typing import Annotated

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from pydantic import Field, validate_call
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.config import conf_option
from mnist_lightning.data import NUM_CLASSES
from mnist_lightning.doors.settings import STRICT
from mnist_lightning.errors import ConfigError
from mnist_lightning.models.networks import (
    NETWORK_SETTINGS,
    Activation,
    MaxoutPieces,
    build_network,
)
from mnist_lightning.models.optim import (
    OPTIMIZER_SETTINGS,
    SCHEDULER_SETTINGS,
    build_optimizer,
    build_scheduler,
)


def loggers_write_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning's loggers write step metrics after this batch: every
    `log_every_n_steps` optimizer steps, and when the fit stops (Lightning's own rule; during
    gradient accumulation the last micro-batch's value is the one written). The one place that
    knows it: tests/test_lightning.py checks that the steps and values written are those of a
    self.log at every batch, so that a change in Lightning shows."""
    every = trainer.log_every_n_steps
    return bool(every) and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)


def _epoch_mean() -> MeanMetric:
    # No NaN check per update (on a GPU each one waits for the device); a NaN loss shows in the
    # epoch's mean, which the divergence stop watches.
    return MeanMetric(nan_strategy="disable")


def _accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro", validate_args=False)


class MNISTClassifier(pl.LightningModule):
    """Cross-entropy classifier around a network of networks.py (`net`, the lesson's MLP by
    default), trained with the optimizer and scheduler its settings name (models/optim.py).

    Every argument is a name or a number, so the hyperparameters Lightning keeps in checkpoints
    are data, never code; the types and ranges beside them are checked here, whoever builds it
    (doors/settings.py). `MNISTClassifier()` is the lesson: MLP, sigmoid, SGD with lr 0.2.
    """

    @validate_call(config=STRICT)
    def __init__(
        self,
        activation: Activation = "sigmoid",
        net: NETWORK_SETTINGS.annotation() | None = None,
        optimizer: OPTIMIZER_SETTINGS.annotation() | None = None,
        scheduler: SCHEDULER_SETTINGS.annotation() | None = None,
        maxout_pieces: MaxoutPieces = 2,
        label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if self.hparams.optimizer is None:  # the lesson's, as conf/optimizer/sgd.yaml says
            self.hparams.optimizer = conf_option("optimizer", "sgd")
        if self.hparams.net is None:
            self.hparams.net = conf_option("model/net", "mlp")
        self.net = build_network(self.hparams.net, activation, maxout_pieces)
        # A compiled forward function, not a module: the state_dict keys stay those of `net`.
        self.compiled_forward = torch.compile(self.net.forward) if compile else None
        self.train_loss, self.val_loss, self.test_loss = _epoch_mean(), _epoch_mean(), _epoch_mean()
        self.train_acc, self.val_acc, self.test_acc = _accuracy(), _accuracy(), _accuracy()
        self.val_acc_best = MaxMetric()
        # In checkpoints: a run resumed, even mid-epoch, reports what an uninterrupted one would.
        for metric in (self.train_loss, self.train_acc, self.val_acc_best):
            metric.persistent(True)

    @property
    def lr(self) -> float:
        """The optimizer's learning rate; Lightning's learning-rate finder sets it (Tuner.lr_find)."""
        return self.hparams.optimizer["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.hparams.optimizer["lr"] = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.compiled_forward or self.net)(x)

    def model_step(self, batch, label_smoothing: float = 0.0):
        """One step shared by train/val/test: the loss of each image, the predictions, the targets."""
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
        return losses, logits.argmax(dim=1), y

    def on_train_start(self) -> None:
        # A one-cycle schedule resumed keeps the length it was built for (its state holds it):
        # a run resumed with more steps would step past its end.
        for config in self.trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            steps = self.trainer.estimated_stepping_batches
            if total is not None and total < steps:
                raise ConfigError(
                    f"scheduler=onecycle was built for {total:,} steps and this run now has "
                    f"{steps:,}: a cycle begun cannot be "
                    "stretched. Finish the run with its own trainer.max_epochs, or start a new "
                    "run with the epochs you want."
                )

    def on_train_epoch_start(self) -> None:
        # Lightning resets them at each epoch's end too; this also drops what a checkpoint saved
        # at an epoch's end carried over (a mid-epoch resume skips this hook and keeps its sums).
        self.train_loss.reset()
        self.train_acc.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # Label smoothing regularises training only; val/test losses stay the plain cross-entropy.
        losses, preds, targets = self.model_step(batch, self.hparams.label_smoothing)
        loss = losses.mean()
        self.train_loss.update(losses.detach())  # per image: the epoch mean ignores batch sizes
        self.train_acc.update(preds, targets)
        # A self.log call costs a quarter of this small network's step (benchmarks/README.md):
        # the metric objects are given to Lightning once an epoch (it keeps them, computes them
        # at the epoch's end and resets them), the step loss when the loggers will write it.
        if self.train_loss.update_count == 1:
            self.log_dict(
                {"train/loss": self.train_loss, "train/acc": self.train_acc},
                on_step=False,
                on_epoch=True,
                prog_bar=True,
            )
        if loggers_write_this_step(self.trainer):
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        losses, preds, targets = self.model_step(batch)
        self.val_loss.update(losses)
        self.val_acc.update(preds, targets)
        self.log_dict({"val/loss": self.val_loss, "val/acc": self.val_acc}, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the check before training is not a result
            return
        self.val_acc_best.update(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        losses, preds, targets = self.model_step(batch)
        self.test_loss.update(losses)
        self.test_acc.update(preds, targets)
        self.log_dict({"test/loss": self.test_loss, "test/acc": self.test_acc})
        return {"preds": preds}  # for callbacks (confusion matrix, misclassified digits)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=1)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), self.hparams.optimizer)
        if not self.hparams.scheduler:
            return optimizer
        scheduler, lightning_keys = build_scheduler(
            optimizer, self.hparams.scheduler, self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **lightning_keys}}
