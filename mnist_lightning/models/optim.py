"""Optimizers and learning-rate schedules by name (conf/optimizer/, conf/scheduler/).

A model's optimizer and scheduler settings are names and numbers (`{"name": "adam", "lr":
0.001}`), so that a checkpoint holds data and never code; the names are looked up here (their
settings' types: doors/settings.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

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


# MNISTClassifier's default: the lesson's plain SGD (conf/optimizer/sgd.yaml).
LESSON_OPTIMIZER = {"name": "sgd", "lr": 0.2, "momentum": 0.0, "weight_decay": 0.0, "fused": True}


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
