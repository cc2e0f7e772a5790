"""Settings that are each right but wrong together, which Lightning or torch would refuse only in
the middle of the fit (or never, and train something else): one line each, saying what to set
instead. training/check.py asks them once every setting has its type."""

from __future__ import annotations

from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf

from mnist_lightning.config import group_configs


def _unvalidated_monitor(cfg: DictConfig) -> str | None:
    """A scheduler that watches a val/ metric must step only where one was measured: Lightning
    stops the fit in a traceback otherwise (and strict=False would step on a stale value)."""
    monitor = OmegaConf.select(cfg, "scheduler.monitor")
    if not isinstance(monitor, str) or not monitor.startswith("val/"):
        return None
    watching = f"scheduler.monitor={monitor} is measured only by a validation"
    if cfg.trainer.get("limit_val_batches") == 0:
        return (
            f"{watching}, and trainer.limit_val_batches=0 runs none: watch a training metric, "
            "scheduler.monitor=train/loss scheduler.mode=min"
        )
    every_epochs = cfg.trainer.get("check_val_every_n_epoch", 1)
    if every_epochs is None:  # validation every N batches of the whole run, across epochs
        return (
            f"{watching}, and trainer.check_val_every_n_epoch=null validates every N batches "
            "across epochs, which no schedule's steps follow: validate within epochs "
            "(trainer.check_val_every_n_epoch=1), or watch a training metric, "
            "scheduler.monitor=train/loss scheduler.mode=min"
        )
    frequency = cfg.scheduler.get("frequency") or 1
    if cfg.scheduler.get("interval") == "step":
        # Lightning counts a step schedule's frequency in batches of the epoch.
        every_steps = cfg.trainer.get("val_check_interval")
        aligned = every_epochs == 1 and isinstance(every_steps, int) and every_steps > 0
        if not (aligned and isinstance(frequency, int) and frequency % every_steps == 0):
            return (
                f"{watching}, not at each step the schedule takes: use scheduler.interval=epoch, "
                "or validate every N batches and step as often (+trainer.val_check_interval=N "
                "scheduler.frequency=N)"
            )
        return None
    if isinstance(every_epochs, int) and isinstance(frequency, int) and frequency % every_epochs:
        return (
            f"{watching}, every {every_epochs} epochs (trainer.check_val_every_n_epoch="
            f"{every_epochs}): step the scheduler as often, scheduler.frequency={every_epochs}"
        )
    return None


def _cycle_without_end(cfg: DictConfig) -> str | None:
    """OneCycle spreads its cycle over the run's steps: a run bounded by no step or epoch count
    (trainer.max_epochs=-1, or null beside max_time) has none, and Lightning's estimate is inf."""
    if OmegaConf.select(cfg, "scheduler.name") != "onecycle":
        return None
    trainer = cfg.trainer
    epochs = trainer.get("max_epochs")
    unbounded = epochs == -1 or (epochs is None and trainer.get("max_time") is not None)
    if not unbounded or trainer.get("max_steps", -1) != -1:
        return None
    given = "-1" if epochs == -1 else "null beside trainer.max_time"
    return (
        f"scheduler=onecycle spreads one cycle over the run's steps, and trainer.max_epochs="
        f"{given} sets no end: give +trainer.max_steps=N or a number of epochs"
    )


def _mirrored(cfg: DictConfig) -> str | None:
    """Mirror images are fair for clothes, not for digits (a mirrored 2 is no digit)."""
    mirror = OmegaConf.select(cfg, "augment.mirror") or 0
    if mirror <= 0 or (OmegaConf.select(cfg, "data.dataset.framing") or "digit") != "digit":
        return None
    return (
        f"augment.mirror={mirror}: a digit's mirror image is another digit or none; mirror only "
        "a dataset of products (data=fashion_mnist), or set augment.mirror=0"
    )


def _spawned(cfg: DictConfig) -> str | None:
    """Strategies that fit in processes started for the fit alone (ddp_spawn, ddp_fork,
    ddp_notebook): what the callbacks measured there (the epochs' history, the figures, the
    exact-resume state) ends with those processes, and Lightning hands back only the weights."""
    strategy = cfg.trainer.get("strategy")
    if not isinstance(strategy, str) or not any(
        w in strategy for w in ("spawn", "fork", "notebook")
    ):
        return None
    return (
        f"trainer.strategy={strategy} trains in processes that end with the fit, taking the "
        "epochs' history and the run's figures with them: use trainer.strategy=ddp "
        "(trainer=ddp_cpu on CPUs), which runs the whole command in each process"
    )


def _savers_kept(cfg: DictConfig) -> str | None:
    """trainer.enable_checkpointing=false beside conf/'s checkpoint callbacks (ModelCheckpoint,
    GracefulInterrupt), which Lightning refuses without saying what to do."""
    if cfg.trainer.get("enable_checkpointing", True) is not False:
        return None
    found = group_configs(cfg.get("callbacks"), Checkpoint)
    callbacks = cfg.get("callbacks") or {}
    savers = [name for name, node in callbacks.items() if any(node is s for s in found)]
    if not savers:
        return None
    return (
        f"trainer.enable_checkpointing=false beside checkpoint callbacks: remove them too "
        f"({' '.join(f'~callbacks.{name}' for name in savers)}); the test set then runs on the "
        "final weights"
    )


COMBINATIONS = (_unvalidated_monitor, _cycle_without_end, _savers_kept, _spawned, _mirrored)
