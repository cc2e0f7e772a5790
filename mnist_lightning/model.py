"""MNISTClassifier: the LightningModule that trains the lesson's network (network.py)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.callbacks import log_at_step
from mnist_lightning.network import ACTIVATIONS, MLP  # noqa: F401  (ACTIVATIONS re-exported)
from mnist_lightning.stepping import DirectStep


def _instantiate(config: dict[str, Any], **kwargs: Any) -> Any:
    from hydra.utils import instantiate

    return instantiate(config, **kwargs)


# Keys of a scheduler config that are Lightning's, not the scheduler's.
LIGHTNING_SCHEDULER_KEYS = ("interval", "frequency", "monitor")


class MNISTClassifier(pl.LightningModule):
    """Cross-entropy classifier around `MLP`; optimizer and scheduler are Hydra partial configs.

    The configs are stored as plain dicts in the hyperparameters (and so in checkpoints) and
    instantiated in `configure_optimizers`, so a checkpoint is data, never pickled code.
    """

    def __init__(
        self,
        activation: str = "sigmoid",
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # see training_step
        self.net = MLP(activation)
        # Smoothing regularises training only; val/test losses stay the plain cross-entropy.
        self.train_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.criterion = nn.CrossEntropyLoss(reduction="none")  # per image, for the metrics
        # torch.compile'd forward kept as a plain function, so state_dict keys do not change.
        self._net_forward = torch.compile(self.net.forward) if compile else self.net.forward
        # No per-update NaN checks: each one is a host-device sync (DivergenceGuard watches the
        # loss). With nan_strategy="disable" torchmetrics 1.9 ignores `weight`, so these means
        # are fed one value per image: the epoch's loss is the per-image mean whatever the
        # batch sizes.
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
            for _ in range(3)
        )
        self.val_acc_best = MaxMetric()
        # From the scheduler config, in configure_optimizers: when to step it, on what metric.
        self.scheduler_interval: str | None = None
        self.scheduler_monitor: str | None = None
        self.scheduler_frequency = 1
        # Lightning's own step path until on_train_start sees, per fit, whether it is needed.
        self._backward_and_step = DirectStep(self, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net_forward(x)

    def _shared_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return self.criterion(logits, y), logits.argmax(dim=1), y  # losses are per image

    def on_train_start(self) -> None:
        # The sanity check ran validation batches before training: forget them.
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()
        self._backward_and_step = DirectStep.for_trainer(self.trainer, self)

    # A training item is a list of optimizer batches (data.batches_per_fetch of them, see
    # data.py); a plain (x, y) batch is one. Per step there is no .item() and no self.log: a step
    # of this small network is so short that either would cost a large share of it. The metric
    # objects are updated once per item and handed to self.log once per epoch; Lightning
    # computes and resets them at the epoch's end, before any callback reads them.
    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        batches = batch if isinstance(batch, list) else [batch]
        # Manual optimization: one optimizer, no accumulation or clipping, so these lines are
        # exactly what Lightning's automatic loop does per batch, without its closure and hook
        # machinery, which costs as much as a whole step of this small network on a CPU.
        # backward_and_step: manual_backward + optimizer.step, or the same hooks without
        # Lightning's dispatch where nothing needs it (stepping.py).
        optimizer = self.optimizers()
        backward_and_step = self._backward_and_step
        step, max_steps = self.global_step, self.trainer.max_steps
        log_every = max(self.trainer.log_every_n_steps, 1)
        losses, all_logits, all_targets = [], [], []
        for x, y in batches:
            if 0 < max_steps <= step:  # Lightning checks only between items
                break
            logits = self(x)
            loss = self.train_criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            backward_and_step(loss, optimizer)
            step += 1
            self._step_schedulers("step")
            losses.append(loss.detach())
            all_logits.append(logits.detach())
            all_targets.append(y)
            if step % log_every == 0:  # straight to the loggers: self.log keeps an item's last
                log_at_step(self.trainer, {"train/loss_step": losses[-1]}, step)
        losses = torch.stack(losses)
        sizes = [len(y) for y in all_targets]
        per_image = losses.repeat_interleave(  # each batch's mean once per image; no sync
            torch.tensor(sizes, device=losses.device), output_size=sum(sizes)
        )
        self.train_loss.update(per_image)
        self.train_acc.update(torch.cat(all_logits).argmax(dim=1), torch.cat(all_targets))
        if batch_idx == 0:
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        # Lightning advances the loggers' step once per loader item; this keeps every logged
        # series (epoch metrics, learning rate, the step values above) on the optimizer-step axis.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += len(losses) - 1
        return {"loss": losses}  # one loss per optimizer step, for callbacks

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        # Manual optimization leaves scheduler stepping to us; interval/frequency/monitor come
        # from the scheduler config (Lightning ignores them in this mode). Every `frequency`
        # epochs, or optimizer steps counted over the whole run.
        if self.scheduler_interval != interval:  # first: this runs at every optimizer step
            return
        count = self.global_step if interval == "step" else self.current_epoch + 1
        if count % self.scheduler_frequency:
            return
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if self.scheduler_monitor:  # ReduceLROnPlateau: needs this epoch's validation metric
            if self.scheduler_monitor in self.trainer.callback_metrics:
                scheduler.step(self.trainer.callback_metrics[self.scheduler_monitor])
        else:
            scheduler.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, preds, targets = self._shared_step(batch)
        self.val_loss.update(loss)
        self.val_acc.update(preds, targets)

    def on_validation_epoch_end(self) -> None:
        accuracy = self._log_epoch("val", self.val_loss, self.val_acc)
        self.val_acc_best.update(accuracy)
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds, targets = self._shared_step(batch)
        self.test_loss.update(loss)
        self.test_acc.update(preds, targets)
        return {"preds": preds}  # for callbacks (confusion matrix, misclassified digits)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_loss, self.test_acc)

    def _log_epoch(
        self, stage: str, loss: MeanMetric, accuracy: MulticlassAccuracy
    ) -> torch.Tensor:
        # compute() syncs across DDP processes; reset() readies the metric for the next epoch.
        epoch_loss, epoch_accuracy = loss.compute(), accuracy.compute()
        loss.reset()
        accuracy.reset()
        self.log(f"{stage}/loss", epoch_loss, prog_bar=stage != "test")
        self.log(f"{stage}/acc", epoch_accuracy, prog_bar=stage != "test")
        return epoch_accuracy

    def _planned_steps(self) -> int:
        """Optimizer steps in the whole fit. Lightning's estimate counts loader items, and an
        item of MNISTDataModule holds several optimizer batches."""
        items = int(self.trainer.estimated_stepping_batches)  # also readies the loaders
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "steps_per_epoch"):
            return items
        steps = datamodule.steps_per_epoch() * self.trainer.max_epochs
        max_steps = self.trainer.max_steps
        return min(steps, max_steps) if max_steps and max_steps > 0 else steps

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=1)

    def configure_optimizers(self):
        optimizer_config = self.hparams.optimizer or {
            "_target_": "torch.optim.SGD",
            "_partial_": True,
            "lr": 0.2,
        }
        optimizer = _instantiate(optimizer_config)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        config = dict(self.hparams.scheduler)
        lightning_keys = {k: config.pop(k) for k in LIGHTNING_SCHEDULER_KEYS if k in config}
        self.scheduler_interval = lightning_keys.get("interval", "epoch")
        self.scheduler_monitor = lightning_keys.get("monitor")
        self.scheduler_frequency = int(lightning_keys.get("frequency", 1))
        make_scheduler = _instantiate(config)
        if getattr(make_scheduler, "func", None) is torch.optim.lr_scheduler.OneCycleLR:
            # One cycle spans the whole run, whatever max_epochs and the batch size are.
            scheduler = make_scheduler(optimizer, total_steps=self._planned_steps())
        else:
            scheduler = make_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "frequency": self.scheduler_frequency,
            },
        }
