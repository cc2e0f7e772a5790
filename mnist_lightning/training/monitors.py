"""Monitors of the training steps: the step loss and the gradients, at the steps the loggers
write (Lightning's own rule, in one place: `loggers_write_at`)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import grad_norm

from mnist_lightning.training.callbacks import tensorboard_writer

KEPT_POINTS = 50  # of each layer's gradient norm over the first epoch (gradient_flow.png)


def loggers_write_at(trainer: pl.Trainer, step: int) -> bool:
    """Whether Lightning's loggers write step metrics at optimizer step `step`: every
    `log_every_n_steps` steps, and when the fit stops (Lightning's own rule; during gradient
    accumulation the last micro-batch's value is the one written). The one place that knows it:
    tests/test_lightning.py checks that the steps and values written are those of a self.log at
    every batch, so that a change in Lightning shows."""
    every = trainer.log_every_n_steps
    return bool(every) and (step % every == 0 or trainer.should_stop)


class StepLossLogger(pl.Callback):
    """`train/loss_step`, the training loss of the step, logged only at the steps the loggers
    write: a self.log call costs a quarter of this small network's step (benchmarks/README.md).
    The train command adds it to every Trainer."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not outputs or "loss" not in outputs:  # a training_step that skipped its batch
            return
        if loggers_write_at(trainer, trainer.global_step):  # (the optimizer has stepped)
            pl_module.log("train/loss_step", outputs["loss"], on_step=True, on_epoch=False)


class GradientMonitor(pl.Callback):
    """Per-layer gradient norms at the steps the loggers write (`log_every_n_steps`) and weight
    histograms every epoch, so that the lesson's vanishing gradients (sigmoid against ReLU)
    can be seen as curves; the norms of each layer's weights at about 50 steps of the first
    epoch are also kept (`first_epoch`: metrics.json's `gradient_norms`, gradient_flow.png).

    The norms go straight to the loggers, as Lightning's own monitors (LearningRateMonitor,
    DeviceStatsMonitor) write theirs: values passed to `self.log` stay in Lightning's result
    collection for the rest of the epoch and are walked again after every step.
    """

    def __init__(self, histograms: bool = True) -> None:
        self.histograms = histograms
        self.first_epoch: dict[str, list[float]] = {}  # "step" and one list per layer's weight

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # At the steps, and with the x-axis step, of Lightning's own step logging.
        if not trainer.is_global_zero:
            return
        write = loggers_write_at(trainer, trainer.global_step + 1) and bool(trainer.loggers)
        keep = trainer.current_epoch == 0 and trainer.global_step % self._keep_every(trainer) == 0
        if not (write or keep):
            return
        norms = grad_norm(getattr(pl_module, "net", pl_module), norm_type=2)
        scalars = {name: float(value) for name, value in norms.items()}
        if write:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
        if keep:  # the weights of the layers (Linear, Conv): not PReLU's slopes, not batch norm's
            net = getattr(pl_module, "net", pl_module)
            layers = {name for name, p in net.named_parameters() if p.dim() >= 2}
            self.first_epoch.setdefault("step", []).append(trainer.global_step)
            for name, value in scalars.items():
                layer = name.removeprefix("grad_2.0_norm/")
                if layer in layers:
                    self.first_epoch.setdefault(layer, []).append(round(value, 6))

    @staticmethod
    def _keep_every(trainer: pl.Trainer) -> int:
        """About 50 points over the first epoch, however long it is."""
        batches = trainer.num_training_batches
        if batches == float("inf"):  # an iterable of unknown length
            return 1
        return max(1, int(batches) // trainer.accumulate_grad_batches // KEPT_POINTS)

    def state_dict(self) -> dict:
        return {"first_epoch": self.first_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.first_epoch = state_dict.get("first_epoch", {})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if self.histograms and writer is not None and trainer.is_global_zero:
            net = getattr(pl_module, "net", pl_module)
            for name, parameter in net.named_parameters():
                values = parameter.detach().cpu()
                values = values[values.isfinite()]  # a diverged run's NaNs have no histogram
                if values.numel():
                    writer.add_histogram(f"weights/{name}", values, trainer.current_epoch)
