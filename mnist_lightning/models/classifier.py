"""MNISTClassifier: the LightningModule that trains the lesson's network (networks.py).

Textbook Lightning: `training_step` takes one `(x, y)` batch and returns its loss; the Trainer
does the backward pass, the optimizer and scheduler steps, accumulation and clipping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.data import NUM_CLASSES
from mnist_lightning.models.networks import LESSON_NETWORK, build_network
from mnist_lightning.models.optim import LESSON_OPTIMIZER, build_optimizer, build_scheduler


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
    are data, never code. `MNISTClassifier()` is the lesson: MLP, sigmoid, SGD with lr 0.2.
    """

    def __init__(
        self,
        activation: str = "sigmoid",
        net: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        maxout_pieces: int = 2,
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams.optimizer = dict(optimizer or LESSON_OPTIMIZER)
        self.hparams.net = dict(net or LESSON_NETWORK)
        self.net = build_network(self.hparams.net, activation, maxout_pieces)
        # A compiled forward function, not a module: the state_dict keys stay those of `net`.
        self.compiled_forward = torch.compile(self.net.forward) if compile else None
        self.train_loss, self.val_loss, self.test_loss = _epoch_mean(), _epoch_mean(), _epoch_mean()
        self.train_acc, self.val_acc, self.test_acc = _accuracy(), _accuracy(), _accuracy()
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.compiled_forward or self.net)(x)

    def model_step(self, batch, label_smoothing: float = 0.0):
        """One step shared by train/val/test: the loss of each image, the predictions, the targets."""
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
        return losses, logits.argmax(dim=1), y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # Label smoothing regularises training only; val/test losses stay the plain cross-entropy.
        losses, preds, targets = self.model_step(batch, self.hparams.label_smoothing)
        loss = losses.mean()
        self.train_loss.update(losses.detach())  # per image: the epoch mean ignores batch sizes
        self.train_acc.update(preds, targets)
        # A self.log call costs a quarter of this small network's step (benchmarks/README.md):
        # the metric objects are given to Lightning once an epoch; it keeps them, computes them
        # at the epoch's end and resets them.
        if self.train_loss.update_count == 1:
            self.log_dict(
                {"train/loss": self.train_loss, "train/acc": self.train_acc},
                on_step=False,
                on_epoch=True,
                prog_bar=True,
            )
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
