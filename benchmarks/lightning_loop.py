"""Lightning's own floor: the project's model and data module under a bare Trainer.

The same MNISTClassifier (one batch per `training_step`, torchmetrics, fused SGD) and
MNISTDataModule as the default run, under a `Trainer` with no logger, no checkpoints, no
progress bar, no model summary and no callbacks but the train command's epoch clock; the same
CPU threads and gc freeze as the train command. Between the framework-free floor
(raw_loop.py) and the project's default command, it shows what an epoch costs in Lightning's
own loop before the project's callbacks and loggers are added. Prints one line per epoch and
`epoch_seconds_median <s>` at the end.

`textbook` runs instead the module as templates write it (lightning-hydra-template's
MNISTLitModule): the same network, loss and metrics, but every metric handed to `self.log` at
every step. The project's epoch is measured against it (`make bench`).

    python benchmarks/lightning_loop.py [epochs] [cpu_threads] [textbook]
"""

import statistics
import sys

import lightning.pytorch as pl
import torch

from mnist_lightning.command import imported_objects_frozen, quiet_library_logs
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.training.callbacks import EpochReport


class TextbookClassifier(MNISTClassifier):
    """The steps as lightning-hydra-template writes them: each metric updated and logged at
    every step (on_epoch=True; Lightning reduces them at the epoch's end)."""

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        losses, preds, targets = self.model_step(batch, self.hparams.label_smoothing)
        loss = losses.mean()
        self.train_loss(losses.detach())
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        losses, preds, targets = self.model_step(batch)
        self.val_loss(losses)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)


epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
textbook = len(sys.argv) > 3 and sys.argv[3] == "textbook"
torch.set_num_threads(threads)
quiet_library_logs()
torch.manual_seed(0)

# The train command's own epoch clock (history.epoch_seconds), so both figures time the same span.
clock = EpochReport(print_every_n_batches=0)
# The lesson's: conf/optimizer/sgd.yaml (fused SGD, lr 0.2).
model = TextbookClassifier() if textbook else MNISTClassifier()
trainer = pl.Trainer(
    max_epochs=epochs,
    accelerator="auto",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    callbacks=[clock],
)
with imported_objects_frozen():  # as the train command does
    trainer.fit(model, MNISTDataModule())  # $MNIST_DATA_DIR, else data/
seconds = clock.history["epoch_seconds"]
for epoch, (second, acc) in enumerate(zip(seconds, clock.history["val/acc"], strict=True), 1):
    print(f"epoch {epoch}: {second:.3f} s  val/acc {acc:.4f}")
print(f"epoch_seconds_median {statistics.median(seconds):.4f}")
