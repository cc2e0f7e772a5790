"""Train the lesson's network: `python -m mnist_lightning.train [overrides]`.

Composes the config, shows the data, fits, tests the best checkpoint on the official test set,
writes `metrics.json` and returns `optimized_metric` (val/acc_best) for Hydra sweepers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lightning.atomic import write_text_atomically
from mnist_lightning.config import CONFIG_DIR, group_targets
from mnist_lightning.errors import ConfigError, OutputError, TrainingDiverged, UserError
from mnist_lightning.runtime import in_multirun
from mnist_lightning.training.tracking import (
    finish_runs,
    keep_offline_runs_offline,
    log_config,
    log_run_files,
)

log = logging.getLogger("mnist_lightning.train")

STAGES = ("train/", "val/", "test/")  # the prefixes of the metrics metrics.json keeps


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test as the config says; return every final metric (also in metrics.json)."""
    from mnist_lightning.checks import check_buildable, check_output_dir, check_training_config
    from mnist_lightning.training.run_folder import RunFolderLock, finished_metrics, task_overrides

    cfg, checkpoint = continue_or_start(cfg)
    check_training_config(cfg)
    check_buildable(cfg, task_overrides())
    run_dir = check_output_dir(cfg.paths.output_dir)
    with RunFolderLock(run_dir) if is_rank_zero() else nullcontext():
        if checkpoint is not None and (done := finished_metrics(run_dir)):
            log.info("%s already finished; its results are in metrics.json", run_dir)
            return done
        start_process(cfg)
        log.info("%s\nrun dir: %s", describe(cfg), run_dir)
        datamodule, model, trainer = build(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        if checkpoint is None:
            show_data(datamodule, trainer, run_dir)
            if cfg.get("lr_find"):
                from mnist_lightning.training.lr_find import find_learning_rate

                cfg.optimizer.lr = find_learning_rate(trainer, model, datamodule, run_dir)
            save_run_config(cfg, run_dir, trainer)
            log_config(trainer, cfg)
        else:
            log.info("resuming from %s", checkpoint)

        fit_seconds = fit(trainer, model, datamodule, checkpoint)
        metrics = final_metrics(trainer, fit_seconds)
        if cfg.get("test", True):
            metrics.update(test_best_checkpoint(trainer, model, datamodule))
        if trainer.is_global_zero:  # under DDP, one metrics.json, written by rank zero
            write_results(cfg, trainer, metrics, run_dir)
        finish_runs(trainer)
    return metrics


def continue_or_start(cfg: DictConfig) -> tuple[DictConfig, Path | None]:
    """The config to train with, and the checkpoint to continue from (None: a new run).

    `resume=`/`ckpt_path=` continue a run with its own saved config. A sweep run again with
    the same `hydra.sweep.dir` keeps its finished jobs and continues the killed ones. Any other
    run refuses a folder that already holds a run, rather than mix two runs' files.
    """
    from mnist_lightning.training import run_folder as runs

    run_dir = Path(cfg.paths.output_dir)
    overrides = runs.task_overrides()
    checkpoint = runs.checkpoint_to_resume(cfg)
    if checkpoint is not None:
        runs.refuse_overrides_on_resume(overrides, run_dir)
    elif (run_dir / runs.RUN_CONFIG).is_file() and is_rank_zero():
        # (Under DDP the other processes start after rank zero wrote the folder's config.)
        if not in_multirun():
            raise OutputError(
                f"{run_dir} already holds a run; continue it with resume={run_dir}, or choose "
                "another folder (hydra.run.dir=<folder>)."
            )
        saved, _ = runs.load_run_config(run_dir)
        if list(saved.get("overrides") or []) != overrides:
            raise ConfigError(
                f"{run_dir} holds another sweep job ({' '.join(saved.get('overrides') or [])}); "
                "run this sweep in a new folder (hydra.sweep.dir=<folder>)."
            )
        last = run_dir / "checkpoints" / "last.ckpt"
        checkpoint = last if last.is_file() else None
    if checkpoint is None or not (run_dir / runs.RUN_CONFIG).is_file():
        return cfg, checkpoint
    saved, moves = runs.load_run_config(run_dir)
    if is_rank_zero():
        runs.relocate_checkpoint(checkpoint, moves)
        runs.forget_logged_after(saved, run_dir, read_checkpoint_step(checkpoint))
    return saved, checkpoint


def read_checkpoint_step(checkpoint: Path) -> int:
    from mnist_lightning.training.checkpoints import read_checkpoint

    return int(read_checkpoint(checkpoint).get("global_step", 0))


def is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def start_process(cfg: DictConfig) -> None:
    """Seed, CPU threads and library logs, before anything is built."""
    import lightning.pytorch as pl

    from mnist_lightning.runtime import quiet_lightning_logs, set_cpu_threads

    quiet_lightning_logs()
    set_cpu_threads(cfg.get("cpu_threads"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)


def describe(cfg: DictConfig) -> str:
    """The composed config in one line per part that matters (the full one is in .hydra/)."""
    optimizer = {k: v for k, v in cfg.optimizer.items() if not k.startswith("_")}
    data = cfg.data
    return "\n".join(
        [
            f"optimizer: {_choice('optimizer', cfg)} {optimizer}",
            f"model: {cfg.model.net._target_.rsplit('.', 1)[-1]} activation={cfg.model.activation}",
            f"scheduler: {_choice('scheduler', cfg)}  augment: {_choice('augment', cfg)}",
            f"data: batch_size={data.batch_size} val_size={data.val_size} shuffle={data.shuffle} "
            f"normalize={data.normalize} data_dir={data.data_dir}",
            f"trainer: accelerator={cfg.trainer.accelerator} max_epochs={cfg.trainer.max_epochs} "
            f"seed={cfg.seed} cpu_threads={cfg.get('cpu_threads')}",
        ]
    )


def _plain(node: Any) -> Any:
    """A config node as plain dicts/lists (checkpoints keep data, never OmegaConf objects)."""
    return OmegaConf.to_container(node, resolve=True) if node else None


def _construct(node: DictConfig, **configs: Any):
    """Like instantiate(), but the nested configs given stay plain dicts (saved in checkpoints as
    data, instantiated by the object itself) instead of becoming objects."""
    from hydra.utils import get_class

    kwargs = {k: v for k, v in _plain(node).items() if k != "_target_"}
    return get_class(node._target_)(**kwargs, **configs)


def _instantiate_group(group: DictConfig | None) -> list:
    from hydra.utils import instantiate

    return [instantiate(node) for node in group_targets(group)]


def build(cfg: DictConfig):
    """Instantiate the datamodule, model, loggers, callbacks and trainer from the config."""
    from hydra.utils import instantiate

    from mnist_lightning.checks import building
    from mnist_lightning.training.run_folder import task_overrides

    overrides = task_overrides()
    with building("data", overrides):
        datamodule = _construct(cfg.data, augment=_plain(cfg.get("augment")))
    with building("model", overrides):
        model = _construct(
            cfg.model, optimizer=_plain(cfg.optimizer), scheduler=_plain(cfg.get("scheduler"))
        )
    with building("logger", overrides):
        keep_offline_runs_offline(cfg)
        loggers = _instantiate_group(cfg.get("logger"))
    with building("callbacks", overrides):
        callbacks = _instantiate_group(cfg.get("callbacks"))
    with building("trainer", overrides, target=cfg.trainer._target_):
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    return datamodule, model, trainer


def show_data(datamodule, trainer, run_dir: Path) -> None:
    """The lesson's look at the data: the first 9 training images, and one batch's shapes."""
    from mnist_lightning.data.datamodule import to_model_input
    from mnist_lightning.training import figures
    from mnist_lightning.training.callbacks import tensorboard_writer

    if not trainer.is_global_zero:
        return
    images, labels = datamodule.mnist["train"]
    figure = figures.digit_grid(images[:9], [str(int(label)) for label in labels[:9]])
    figures.publish(figure, run_dir / "samples.png", tensorboard_writer(trainer), "data/samples")

    images, labels = next(iter(datamodule.train_dataloader()))
    x = to_model_input(images, datamodule.hparams.normalize)  # as the model gets it
    log.info(
        "one batch: x %s %s, y %s %s",
        list(x.shape),
        str(x.dtype).removeprefix("torch."),
        list(labels.shape),
        str(labels.dtype).removeprefix("torch."),
    )


def save_run_config(cfg: DictConfig, run_dir: Path, trainer) -> None:
    """The resolved config, with the options chosen per group and the command's overrides:
    what `resume=` continues with."""
    from mnist_lightning.training import run_folder as runs

    if trainer.is_global_zero:
        groups = ("optimizer", "scheduler", "augment", "model/net")
        choices = {group: _choice(group, cfg) for group in groups}
        runs.save_run_config(cfg, run_dir, choices, runs.task_overrides())


def fit(trainer, model, datamodule, checkpoint: Path | None) -> float:
    """trainer.fit, from `checkpoint` when resuming; the seconds it took. A diverged loss (the
    divergence stop, conf/callbacks/) ends in TrainingDiverged."""
    from mnist_lightning.runtime import imported_objects_frozen

    if checkpoint is not None:
        from mnist_lightning.training.checkpoints import check_checkpoint_fits

        check_checkpoint_fits(model, checkpoint)
    with imported_objects_frozen():
        started = time.perf_counter()
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        except SystemExit:
            if trainer.interrupted:  # Ctrl-C: GracefulInterrupt saved last.ckpt
                log.warning(
                    "resume with: python -m mnist_lightning.train resume=%s",
                    trainer.default_root_dir,
                )
            raise
        seconds = time.perf_counter() - started
    diverged = divergence(trainer)
    if diverged:
        raise TrainingDiverged(diverged)
    return seconds


def divergence(trainer) -> str | None:
    """Why an EarlyStopping callback stopped the fit on a NaN or exploding metric, or None."""
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    diverged = (EarlyStoppingReason.NON_FINITE_METRIC, EarlyStoppingReason.DIVERGENCE_THRESHOLD)
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopping_reason in diverged:
            optimizer = trainer.optimizers[0]
            value = float(trainer.callback_metrics.get(callback.monitor, float("nan")))
            best = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            )
            return (
                f"training stopped in epoch {callback.stopped_epoch + 1}: {callback.monitor} became "
                f"{value:.4g}. The learning rate is probably too high ({type(optimizer).__name__} "
                f"lr={optimizer.param_groups[0]['lr']:g}); try a smaller optimizer.lr. "
                + (
                    f"The best checkpoint so far is kept: {best}"
                    if best
                    else "No checkpoint was kept."
                )
            )
    return None


def final_metrics(trainer, fit_seconds: float) -> dict[str, Any]:
    """The fit's last epoch metrics, its per-epoch history and its size."""
    from mnist_lightning.training.callbacks import EpochReport

    metrics: dict[str, Any] = _stage_scalars(trainer.callback_metrics)
    report = next((c for c in trainer.callbacks if isinstance(c, EpochReport)), None)
    if report is not None:
        # The history is the record, also when a resumed fit had nothing left to do.
        metrics.update({name: values[-1] for name, values in report.history.items() if values})
        metrics.pop("epoch_seconds", None)
        metrics.update(history=dict(report.history), training_started_at=report.training_started_at)
    metrics.update(
        fit_seconds=round(fit_seconds, 2),
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        world_size=trainer.world_size,
    )
    return metrics


def test_best_checkpoint(trainer, model, datamodule) -> dict[str, Any]:
    """The official test set, once, on the best checkpoint by val/acc (or the final weights)."""
    from mnist_lightning.training.checkpoints import read_checkpoint

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        # Only the weights, read as data (weights_only): restoring the whole checkpoint would
        # also rewind callbacks, and weight averaging would swap its average back out.
        model.load_state_dict(read_checkpoint(best)["state_dict"])
    trainer.test(model, datamodule=datamodule, verbose=False)
    return {**_stage_scalars(trainer.callback_metrics), "test_checkpoint": best or "final weights"}


def write_results(cfg: DictConfig, trainer, metrics: dict[str, Any], run_dir: Path) -> None:
    """metrics.json, TensorBoard's HParams entry, the trackers' files and the summary line."""
    log_hparams(trainer, cfg, metrics)
    write_text_atomically(
        run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    )
    log_run_files(trainer, run_dir, metrics.get("test_checkpoint", ""))
    log.info(
        "test/acc %.4f  test/loss %.4f  epochs %d  time %.1f s  run dir %s",
        metrics.get("test/acc", float("nan")),
        metrics.get("test/loss", float("nan")),
        metrics["epochs"],
        metrics["fit_seconds"],
        run_dir,
    )


def _stage_scalars(metrics: dict) -> dict[str, float]:
    return {name: float(v) for name, v in metrics.items() if name.startswith(STAGES)}


def _choice(group: str, cfg: DictConfig) -> str:
    """The option picked for a config group (`momentum`, not `torch.optim.SGD`)."""
    if cfg.get("choices") and group in cfg.choices:  # a resumed run's own record
        return str(cfg.choices[group])
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices[group])
    except (ValueError, KeyError):  # composed outside @hydra.main
        node = OmegaConf.select(cfg, group.replace("/", "."))
        return node._target_.rsplit(".", 1)[-1].lower() if node else "none"


def log_hparams(trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """TensorBoard's HParams tab: the run's hyperparameters beside its final metrics."""
    from lightning.pytorch.loggers import TensorBoardLogger

    params = {
        "net": _choice("model/net", cfg),
        "optimizer": _choice("optimizer", cfg),
        "lr": cfg.optimizer.lr,
        "activation": cfg.model.activation,
        "batch_size": cfg.data.batch_size,
        "epochs": cfg.trainer.max_epochs,
        "scheduler": _choice("scheduler", cfg),
        "seed": cfg.seed,
        "normalize": cfg.data.normalize,
        "shuffle": cfg.data.shuffle,
    }
    # Own tags: the HParams tab shows each metric's last value, and test/acc is already a scalar.
    final = {
        f"hp/{k.replace('/', '_')}": metrics[k]
        for k in ("test/acc", "test/loss", "val/acc_best")
        if k in metrics
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, final)
            logger.experiment.flush()


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Leave `failure.json` in the job's folder so the sweep summary can say what failed."""
    import traceback

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    details = {
        "error": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
    }
    write_text_atomically(run_dir / "failure.json", json.dumps(details, indent=2) + "\n")


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as error:
        user_error = isinstance(error, UserError)
        if in_multirun():
            # One failed job must not stop the sweep: record it, tell the sweeper "no value".
            # None, not NaN: the Optuna sweeper records a non-number as a failed trial, but
            # hands NaN to study.tell, which raises and ends the whole search.
            record_failure(cfg, error)
            log.error(
                "job failed: %s", error if user_error else repr(error), exc_info=not user_error
            )
            return None
        if user_error:
            log.error("error: %s", error)
            sys.exit(1)
        if isinstance(error, OSError) and error.filename:  # a folder or file the system refused
            log.error(
                "error: %s: %s; check that it exists and can be written, or choose another path",
                error.strerror or type(error).__name__,
                error.filename,
            )
            sys.exit(1)
        raise
    # What a sweeper optimises (conf/train.yaml); None (no validation) is no value.
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()
