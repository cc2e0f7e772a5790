"""Optimizers and learning-rate schedules by name (conf/optimizer/, conf/scheduler/).

A model's optimizer and scheduler settings are names and numbers (`{"name": "adam", "lr":
0.001}`), so that a checkpoint holds data and never code; the names are looked up here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import Field

from mnist_lightning.doors.settings import MAX_WHOLE, METRIC, NamedSettings

# conf/optimizer/<name>.yaml -> the torch class it configures.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,  # the lesson's (lr 0.2)
    "momentum": torch.optim.SGD,  # with momentum 0.9
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}
# conf/scheduler/<name>.yaml -> the torch class (scheduler=none: a constant rate).
SCHEDULERS: dict[str, type] = {
    "step": torch.optim.lr_scheduler.StepLR,
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "onecycle": torch.optim.lr_scheduler.OneCycleLR,
    "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
}
# Keys of a scheduler's settings that are Lightning's (its lr_scheduler dict), not the scheduler's.
LIGHTNING_SCHEDULER_KEYS = ("interval", "frequency", "monitor")
# What OneCycle is given by the model rather than by its settings.
ONECYCLE_FROM_THE_RUN = ("max_lr", "total_steps", "epochs", "steps_per_epoch")


# A model's optimizer and scheduler settings: one of the tables' classes by name, with the
# class's own arguments (OPTIMIZER_SETTINGS, SCHEDULER_SETTINGS; doors/settings.py).
OPTIMIZER_SETTINGS = NamedSettings("optimizer", OPTIMIZERS, skip=("params",))
SCHEDULER_SETTINGS = NamedSettings(
    "scheduler",
    SCHEDULERS,
    skip=("optimizer", "last_epoch", *ONECYCLE_FROM_THE_RUN),
    extra=(  # Lightning's keys (its lr_scheduler dict)
        ("interval", Literal["epoch", "step"], "epoch"),
        ("frequency", Annotated[int, Field(ge=1, le=MAX_WHOLE)], 1),
        ("monitor", Optional[METRIC], None),  # noqa: UP045
    ),
)


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], settings: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The optimizer `settings` describe (`name` and its hyperparameters)."""
    options = dict(settings)
    return OPTIMIZERS[options.pop("name")](parameters, **options)


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: Mapping[str, Any], total_steps: int
) -> tuple[Any, dict[str, Any]]:
    """The scheduler `settings` describe, and the keys of them that are Lightning's (interval,
    frequency, monitor). OneCycle makes one cycle of `total_steps`, peaking at the optimizer's
    learning rate."""
    options = dict(settings)
    lightning_keys = {k: options.pop(k) for k in LIGHTNING_SCHEDULER_KEYS if k in options}
    scheduler = SCHEDULERS[options.pop("name")]
    if scheduler is torch.optim.lr_scheduler.OneCycleLR:
        options.update(max_lr=optimizer.param_groups[0]["lr"], total_steps=total_steps)
    return scheduler(optimizer, **options), lightning_keys
