"""Evaluate a checkpoint again: `python -m mnist_lightning.evaluate ckpt_path=<file or run folder>`.

Tests on the official test set (or `split=val`) with the data settings the checkpoint was
trained with; prints accuracy, loss, per-class precision/recall/accuracy and the confusion
matrix; writes `eval.json`, `confusion_matrix.png` and `misclassified.png` into its own folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.data.mnist_files import NUM_CLASSES
from mnist_lightning.errors import UserError

log = logging.getLogger("mnist_lightning.evaluate")


def confusion_text(matrix: list[list[int]]) -> str:
    header = "true\\pred " + " ".join(f"{d:>5}" for d in range(NUM_CLASSES))
    rows = [
        f"{true:>9} " + " ".join(f"{n:>5}" for n in counts) for true, counts in enumerate(matrix)
    ]
    return "\n".join([header, *rows])


def per_class_text(per_class: dict[str, list[float]]) -> str:
    lines = ["digit  precision  recall  accuracy"]
    for digit in range(NUM_CLASSES):
        p, r, a = (per_class[k][digit] for k in ("precision", "recall", "accuracy"))
        lines.append(f"{digit:>5}  {p:>9.4f}  {r:>6.4f}  {a:>8.4f}")
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    import lightning.pytorch as pl

    from mnist_lightning.data.datamodule import MNISTDataModule
    from mnist_lightning.runtime import imported_objects_frozen, quiet_lightning_logs
    from mnist_lightning.training.callbacks import TestSetReport
    from mnist_lightning.training.checkpoints import load_trained

    quiet_lightning_logs()
    if cfg.split not in ("test", "val"):
        raise UserError(
            f"split={cfg.split} is not a split; use split=test (the official test set) or split=val"
        )
    checkpoint, model, settings = load_trained(cfg.ckpt_path)
    data_dir = cfg.data_dir or os.environ.get("MNIST_DATA_DIR") or settings.get("data_dir")
    # The data settings the checkpoint was trained with (its split, normalisation, files).
    kept = (
        "val_size",
        "batch_size",
        "eval_batch_size",
        "normalize",
        "split_seed",
        "mirrors",
        "expected_files",
    )
    datamodule = MNISTDataModule(
        data_dir=data_dir, shuffle=False, **{k: settings[k] for k in kept if k in settings}
    )
    datamodule.test_split = cfg.split
    output_dir = Path(cfg.paths.output_dir)
    report = TestSetReport(str(output_dir), max_misclassified=cfg.max_misclassified)
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        callbacks=[report],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with imported_objects_frozen():
        tested = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    results = {
        "checkpoint": str(checkpoint),
        "split": cfg.split,
        "images": len(datamodule.splits[cfg.split]),
        f"{cfg.split}/acc": tested["test/acc"],
        f"{cfg.split}/loss": tested["test/loss"],
        "data": {k: settings.get(k) for k in ("normalize", "val_size", "split_seed", "batch_size")},
        **report.results,
    }
    write_text_atomically(output_dir / "eval.json", json.dumps(results, indent=2) + "\n")
    log.info(
        "checkpoint %s\n%s split, %d images: accuracy %.4f  loss %.4f\n\n%s\n\nconfusion matrix "
        "(rows: true digit, columns: predicted)\n%s\n\nwrote eval.json, confusion_matrix.png, "
        "misclassified.png to %s",
        checkpoint,
        cfg.split,
        results["images"],
        results[f"{cfg.split}/acc"],
        results[f"{cfg.split}/loss"],
        per_class_text(report.results["per_class"]),
        confusion_text(report.results["confusion_matrix"]),
        output_dir,
    )
    return results


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except UserError as error:
        log.error("error: %s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
