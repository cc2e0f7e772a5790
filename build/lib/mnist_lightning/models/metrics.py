"""The names of what MNISTClassifier logs: per epoch (the epoch report, metrics.json's history),
and all that callbacks, schedulers and sweepers may watch."""

STAGES = ("train", "val", "test")  # what a metric's name begins with (`test/acc`)
EPOCH_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")
LOGGED_METRICS = (*EPOCH_METRICS, "train/loss_step")
