"""Train the lesson's network: `python -m mnist_lightning.train [overrides]`.

Composes the config, shows the data, fits, tests the best checkpoint on the official test set,
writes `metrics.json` and returns `val/acc_best` for Hydra sweepers.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lightning.config import CONFIG_DIR
from mnist_lightning.errors import UserError

log = logging.getLogger("mnist_lightning.train")


def describe(cfg: DictConfig) -> str:
    """The composed config in one line per part that matters (the full one is in .hydra/)."""
    optimizer = {k: v for k, v in cfg.optimizer.items() if not k.startswith("_")}
    scheduler = _choice("scheduler", cfg) if cfg.get("scheduler") else "none"
    augment = _choice("augment", cfg) if cfg.get("augment") else "none"
    return "\n".join(
        [
            f"optimizer: {_choice('optimizer', cfg)} {optimizer}",
            f"model: {cfg.model._target_.rsplit('.', 1)[-1]} activation={cfg.model.activation}",
            f"scheduler: {scheduler}  augment: {augment}",
            f"data: batch_size={cfg.data.batch_size} (x{cfg.data.get('batches_per_fetch', 1)} per "
            f"fetch) val_size={cfg.data.val_size} "
            f"shuffle={cfg.data.shuffle} normalize={cfg.data.normalize} data_dir={cfg.data.data_dir}",
            f"trainer: accelerator={cfg.trainer.accelerator} max_epochs={cfg.trainer.max_epochs} "
            f"seed={cfg.seed}",
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


def build(cfg: DictConfig):
    """Instantiate the datamodule, model, loggers, callbacks and trainer from the config."""
    from hydra.utils import instantiate

    datamodule = _construct(cfg.data, augment=_plain(cfg.get("augment")))
    model = _construct(
        cfg.model, optimizer=_plain(cfg.optimizer), scheduler=_plain(cfg.get("scheduler"))
    )
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = []
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        if name == "learning_rate_monitor" and not loggers:
            continue  # it has nowhere to write without a logger
        callbacks.append(instantiate(callback_cfg))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    return datamodule, model, trainer


def show_data(datamodule, trainer, run_dir: Path) -> None:
    """The lesson's look at the data: the first 9 training images, and one batch's shapes."""
    from mnist_lightning import figures
    from mnist_lightning.data import load_mnist, to_model_input

    images, labels = load_mnist(datamodule.data_dir, download=False)["train"]
    from mnist_lightning.callbacks import tensorboard_writer

    figure = figures.digit_grid(images[:9], [str(int(label)) for label in labels[:9]])
    figures.publish(figure, run_dir / "samples.png", tensorboard_writer(trainer), "data/samples")

    images, labels = next(iter(datamodule.train_dataloader()))  # one loader item
    size = datamodule.hparams.batch_size  # its first optimizer batch, as the model gets it
    x, y = to_model_input(images[:size], datamodule.hparams.normalize), labels[:size]
    log.info(
        "one batch: x %s %s, y %s %s",
        list(x.shape),
        str(x.dtype).removeprefix("torch."),
        list(y.shape),
        str(y.dtype).removeprefix("torch."),
    )


def _scalars(metrics: dict) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def quiet_lightning_logs() -> None:
    """Route Lightning's messages through Hydra's logging (console + train.log), minus its tips."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if _drop_noise not in handler.filters:  # once, even when a sweep trains many jobs
            handler.addFilter(_drop_noise)
    # Library deprecation chatter that a user can do nothing about.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Epoch metrics come from torchmetrics' compute(), which already syncs across DDP processes.
    warnings.filterwarnings(
        "ignore", message=".*when logging on epoch level in distributed setting.*"
    )


@contextmanager
def imported_objects_frozen() -> Iterator[None]:
    """Torch, Lightning, SciPy and the rest leave ~450,000 long-lived objects that every full
    garbage collection walks (0.3 s each), and the interpreter's exit once more (over 1 s).
    Frozen, they are left alone; what the work creates is collected as usual. The freeze stays
    for the exit; in a sweep whose jobs share this process it ends with the job, so that the
    next job's collections can free this one's objects."""
    gc.freeze()
    try:
        yield
    finally:
        if _in_multirun():
            gc.unfreeze()


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(s in record.getMessage() for s in _NOISE)


_NOISE = ("Tip:", "TPU available", "HPU available", "Skipping setting a default", "LOCAL_RANK")


RUN_CONFIG = "run_config.yaml"  # the resolved config of a run, kept for resuming it


def resume_point(cfg: DictConfig) -> tuple[Path | None, int]:
    """The checkpoint to continue from (`resume=<run folder>` or `ckpt_path=<file>`) and the
    number of epochs it has finished, or (None, 0)."""
    from mnist_lightning.checkpoint import read_checkpoint

    if cfg.get("ckpt_path"):
        checkpoint = Path(cfg.ckpt_path).expanduser()
    elif cfg.get("resume"):
        run = Path(cfg.resume).expanduser()
        if not (run / RUN_CONFIG).is_file() and not (run / "checkpoints").is_dir():
            raise UserError(
                f"resume={run}: not a run folder of this project (no {RUN_CONFIG}, no checkpoints/)"
            )
        checkpoint = run / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise UserError(
                f"resume={run}: it has no checkpoints/last.ckpt; the run stopped before its first epoch "
                "ended. Start it again instead."
            )
    else:
        return None, 0
    state = read_checkpoint(checkpoint)  # refuse a damaged or unsafe file with a clear message
    return checkpoint, state.get("epoch", -1) + 1


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test as the config says; return every final metric (also in metrics.json)."""
    from mnist_lightning.config import check_output_dir, check_training_config

    checkpoint, epochs_done = resume_point(cfg)
    if checkpoint is not None and (Path(cfg.paths.output_dir) / RUN_CONFIG).is_file():
        # A resumed run finishes what it planned: its own saved config, not today's defaults.
        cfg = OmegaConf.load(Path(cfg.paths.output_dir) / RUN_CONFIG)
    check_training_config(cfg)
    run_dir = check_output_dir(cfg.paths.output_dir)
    finished = epochs_done >= cfg.trainer.max_epochs
    if checkpoint is not None and finished and (run_dir / "metrics.json").is_file():
        log.info(
            "%s already finished its %d epochs; its results are in metrics.json",
            run_dir,
            cfg.trainer.max_epochs,
        )
        return json.loads((run_dir / "metrics.json").read_text())

    import lightning.pytorch as pl

    from mnist_lightning.callbacks import EpochHistory
    from mnist_lightning.checkpoint import read_checkpoint

    quiet_lightning_logs()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info("%s\nrun dir: %s", describe(cfg), run_dir)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)

    datamodule, model, trainer = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if trainer.is_global_zero and checkpoint is None:
        saved = OmegaConf.to_container(cfg, resolve=True)
        saved["choices"] = {
            group: _choice(group, cfg) for group in ("optimizer", "scheduler", "augment")
        }
        OmegaConf.save(saved, run_dir / RUN_CONFIG)
        show_data(datamodule, trainer, run_dir)

    with imported_objects_frozen():
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        fit_seconds = time.perf_counter() - started
    metrics = _scalars(trainer.callback_metrics)
    history = next((c for c in trainer.callbacks if isinstance(c, EpochHistory)), None)
    if history is not None:
        metrics.update(history=dict(history.history), first_step_at=history.first_step_at)

    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            # Only the weights, read as data (weights_only): restoring the whole checkpoint would
            # also rewind callbacks, and weight averaging would swap its average back out.
            model.load_state_dict(read_checkpoint(best)["state_dict"])
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics.update(_scalars(trainer.callback_metrics))
        metrics["test_checkpoint"] = best or "final weights"

    metrics.update(
        fit_seconds=round(fit_seconds, 2),
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        world_size=trainer.world_size,
    )
    if trainer.is_global_zero:  # under DDP, one metrics.json, written by rank zero
        log_hparams(trainer, cfg, metrics)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        log.info(
            "test/acc %.4f  test/loss %.4f  epochs %d  time %.1f s  run dir %s",
            metrics.get("test/acc", float("nan")),
            metrics.get("test/loss", float("nan")),
            metrics["epochs"],
            fit_seconds,
            run_dir,
        )
    return metrics


def _choice(group: str, cfg: DictConfig) -> str:
    """The option picked for a config group (`momentum`, not `torch.optim.SGD`)."""
    if cfg.get("choices") and group in cfg.choices:  # a resumed run's own record
        return str(cfg.choices[group])
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices[group])
    except (ValueError, KeyError):  # composed outside @hydra.main
        node = cfg.get(group)
        return node._target_.rsplit(".", 1)[-1].lower() if node else "none"


def log_hparams(trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """TensorBoard's HParams tab: the run's hyperparameters beside its final metrics."""
    from lightning.pytorch.loggers import TensorBoardLogger

    params = {
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


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


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
    (run_dir / "failure.json").write_text(json.dumps(details, indent=2) + "\n")


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as error:
        user_error = isinstance(error, UserError)
        if _in_multirun():
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
        raise
    # Hydra sweepers (optuna) maximise what main returns; None (no validation) is no value.
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    main()
