"""Evaluate a checkpoint again: `python -m mnist_lightning.evaluate ckpt_path=<file or run folder>`.

Tests on the official test set (or `split=val`) with the data settings the checkpoint was
trained with (normalisation, split), on the data the command says (`data_dir`, else
$MNIST_DATA_DIR, else data/); prints accuracy, loss, per-class precision/recall/accuracy and the
confusion matrix; writes `eval.json`, `confusion_matrix.png` and `misclassified.png` into its
own folder.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.command import command
from mnist_lightning.config import CONFIG_DIR, dataset_description
from mnist_lightning.data import NUM_CLASSES
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.data.datasets import MNIST
from mnist_lightning.doors.checkpoints import load_trained
from mnist_lightning.errors import ConfigError
from mnist_lightning.folders import refuse_inside_a_run
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.settings import EvaluateOptions, accelerator_problem, command_options
from mnist_lightning.training.callbacks import TestSetReport

log = logging.getLogger("mnist_lightning.evaluate")


def confusion_text(matrix: list[list[int]], classes: tuple[str, ...] = MNIST.classes) -> str:
    header = "true\\pred " + " ".join(f"{d:>5}" for d in range(NUM_CLASSES))
    rows = [
        f"{true:>9} " + " ".join(f"{n:>5}" for n in counts) for true, counts in enumerate(matrix)
    ]
    names = [] if classes == MNIST.classes else ["", *(f"{i}: {c}" for i, c in enumerate(classes))]
    return "\n".join([header, *rows, *names])


def per_class_text(per_class: dict[str, list[float]], classes=MNIST.classes) -> str:
    width = max(5, *(len(c) for c in classes))
    word = "digit" if classes == MNIST.classes else "class"
    lines = [f"{word:>{width}}  precision  recall  accuracy"]
    for index, name in enumerate(classes):
        p, r, a = (per_class[k][index] for k in ("precision", "recall", "accuracy"))
        lines.append(f"{name:>{width}}  {p:>9.4f}  {r:>6.4f}  {a:>8.4f}")
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    options: EvaluateOptions = command_options(EvaluateOptions, cfg)
    if problem := accelerator_problem("accelerator", options.accelerator):
        raise ConfigError(problem)
    output_dir = refuse_inside_a_run(cfg.paths.output_dir, "hydra.run.dir")
    classes = (MNISTClassifier, MNISTDataModule)  # the whole model and data settings: tested
    trained = load_trained(options.ckpt_path, options.net_target, classes)
    # The checkpoint's split and normalisation; where the data is, from this command.
    settings = {k: v for k, v in trained.data.items() if k not in ("augment", "shuffle")}
    settings["dataset"] = dataset_description(trained.dataset.name)  # its files, from conf/data/
    datamodule = MNISTDataModule(data_dir=options.data_dir, shuffle=False, **settings)
    datamodule.test_split = options.split
    report = TestSetReport(str(output_dir), max_misclassified=options.max_misclassified)
    trainer = pl.Trainer(
        accelerator=options.accelerator,
        devices=1,
        logger=False,
        callbacks=[report],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    tested = trainer.test(trained.model, datamodule=datamodule, verbose=False)[0]
    split = options.split
    results = {
        "checkpoint": str(trained.checkpoint),
        "split": split,
        "images": len(datamodule.splits[split]),
        f"{split}/acc": tested["test/acc"],
        f"{split}/loss": tested["test/loss"],
        "data": {k: trained.data.get(k) for k in ("normalize", "val_size", "split_seed")},
        "dataset": datamodule.dataset.name,
        **report.results,
    }
    write_text_atomically(output_dir / "eval.json", json.dumps(results, indent=2) + "\n")
    log.info(
        "checkpoint %s\n%s split, %d images: accuracy %.4f  loss %.4f\n\n%s\n\nconfusion matrix "
        "(rows: the true class, columns: the predicted one)\n%s\n\nwrote eval.json, confusion_matrix.png, "
        "misclassified.png to %s",
        trained.checkpoint,
        split,
        results["images"],
        results[f"{split}/acc"],
        results[f"{split}/loss"],
        per_class_text(report.results["per_class"], datamodule.dataset.classes),
        confusion_text(report.results["confusion_matrix"], datamodule.dataset.classes),
        output_dir,
    )
    return results


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
