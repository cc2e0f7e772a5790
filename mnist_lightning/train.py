"""Train the lesson's network: `python -m mnist_lightning.train [overrides]`.

`train()` reads as the run goes: take the run folder (a new run, or one to continue) and the
run's settings (one typed object, settings.py, checked by training/check.py), build the data,
the model and the Trainer, fit, test the best checkpoint on the official test set, write the
results. `main` returns `optimized_metric` (val/acc_best) to Hydra's
sweepers. The stages live in training/: check.py, run.py (build, fit, test), run_folder.py (start
or continue, the lock, the record), results.py (metrics.json and the trackers); `train()`
imports them when a run starts, so that `--help` needs only Hydra and the configs.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from mnist_lightning.command import command, freeze_imported_objects
from mnist_lightning.config import CONFIG_DIR

log = logging.getLogger("mnist_lightning.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test as the config says; return every final metric (also in metrics.json)."""
    from mnist_lightning.training import results, run
    from mnist_lightning.training.lr_find import find_learning_rate
    from mnist_lightning.training.run_folder import RunFolder

    freeze_imported_objects()  # what these imports brought in, too (command.py says why)
    folder = RunFolder(cfg.paths.output_dir)
    with folder.locked():
        # The run's one settings object (settings.py), checked; and where it continues from.
        settings, resume = folder.start_or_continue(cfg)
        if resume is not None and resume.finished:  # killed after its results were written
            return resume.finished
        run.set_up_process(settings)
        log.info("%s\nrun dir: %s", settings.describe(), folder.path)
        datamodule, model, trainer = run.build(settings)
        if resume is None:
            if settings.init_from:  # fine-tuning: the network starts from trained weights
                run.start_from_weights(model, settings.init_from)
            if settings.lr_find:
                settings.optimizer["lr"] = find_learning_rate(
                    trainer, model, datamodule, folder.path
                )
            folder.save_record(settings)
        fit_seconds = run.fit(trainer, model, datamodule, settings, resume)
        metrics = results.final_metrics(trainer, fit_seconds)
        if settings.test:
            metrics |= results.tested(trainer, run.test_best_checkpoint(trainer, model, datamodule))
        results.write_results(settings, trainer, metrics, folder)
    return metrics


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
@command
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # What a sweeper optimises (conf/train.yaml); None (no validation) is no value.
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()
