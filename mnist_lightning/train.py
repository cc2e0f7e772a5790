"""Train the lesson's network: `python -m mnist_lightning.train [overrides]`.

`train()` reads as the run goes: take the run folder (a new run, or one to continue), check the
config, build the data, the model and the Trainer, fit, test the best checkpoint on the official
test set, write the results. `main` returns `optimized_metric` (val/acc_best) to Hydra's
sweepers. The stages live in training/: check.py, run.py (build, fit, test), run_folder.py (start
or continue, the lock, the record), results.py (metrics.json and the trackers).
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
    # The stages are imported here, when a run starts, not with this module: `--help` needs
    # only Hydra and the configs, not torch and Lightning (which take most of a start).
    from mnist_lightning.doors.checkpoints import (
        check_checkpoint_fits,
        fits_before_building,
        read_checkpoint,
    )
    from mnist_lightning.training import results, run
    from mnist_lightning.training.check import check
    from mnist_lightning.training.lr_find import find_learning_rate
    from mnist_lightning.training.run_folder import RunFolder
    from mnist_lightning.training.tracking import end_killed_attempts, log_config

    freeze_imported_objects()  # what these imports brought in, too (command.py says why)
    folder = RunFolder(cfg.paths.output_dir)
    with folder.locked():
        cfg, checkpoint = folder.start_or_continue(cfg)
        if checkpoint is not None and (done := folder.finished_metrics()):
            log.info("%s already finished; its results are in metrics.json", folder.path)
            return done
        check(cfg, folder.overrides)
        run.set_up_process(cfg)
        log.info("%s\nrun dir: %s", run.describe(cfg, folder.choices), folder.path)
        kept_rows, fits = [], False
        if checkpoint is not None:  # what the killed attempt logged after it goes
            state = read_checkpoint(checkpoint, for_lightning=True)  # one read, handed on
            fits = fits_before_building(
                lambda: run.build_model(cfg), checkpoint, state["state_dict"]
            )
            kept_rows = folder.forget_logged_after(cfg, state.get("global_step", 0))
        datamodule, model, trainer = run.build(cfg, folder.overrides)
        datamodule.prepare_data()
        if checkpoint is None:
            if cfg.lr_find:
                cfg.optimizer.lr = find_learning_rate(trainer, model, datamodule, folder.path)
            folder.save_record(cfg)
        else:
            log.info("resuming from %s", checkpoint)
            if not fits:
                check_checkpoint_fits(model, checkpoint, state["state_dict"])
            folder.log_again(trainer.loggers, kept_rows)
        log_config(trainer, cfg)  # each attempt is a tracker run of its own (MLflow, W&B)
        if checkpoint is not None:
            end_killed_attempts(trainer, folder.path)

        fit_seconds = run.fit(trainer, model, datamodule, checkpoint)
        metrics = results.final_metrics(trainer, fit_seconds)
        if cfg.test:
            tested = run.test_best_checkpoint(trainer, model, datamodule)
            metrics.update(results.tested(trainer, tested))
        results.write_results(cfg, folder.choices, trainer, metrics, folder)
    return metrics


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
@command
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # What a sweeper optimises (conf/train.yaml); None (no validation) is no value.
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()
