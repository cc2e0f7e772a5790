"""Optimizers and learning-rate schedules by name (conf/optimizer/, conf/scheduler/).

A model's optimizer and scheduler settings are names and numbers (`{"name": "adam", "lr":
0.001}`), so that a checkpoint holds data and never code; the names are looked up here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from mnist_lightning.schema import class_problems, plain_container

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


def _named(table: Mapping[str, type], kind: str, name: Any) -> type:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(table)}")
    return table[name]


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    return _named(OPTIMIZERS, "optimizer", name)


def scheduler_class(name: str) -> type:
    return _named(SCHEDULERS, "scheduler", name)


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], settings: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The optimizer `settings` describe (`name` and its hyperparameters)."""
    options = dict(settings)
    return optimizer_class(options.pop("name"))(parameters, **options)


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: Mapping[str, Any], total_steps: int
) -> tuple[Any, dict[str, Any]]:
    """The scheduler `settings` describe, and the keys of them that are Lightning's (interval,
    frequency, monitor). OneCycle makes one cycle of `total_steps`, peaking at the optimizer's
    learning rate."""
    options = dict(settings)
    lightning_keys = {k: options.pop(k) for k in LIGHTNING_SCHEDULER_KEYS if k in options}
    scheduler = scheduler_class(options.pop("name"))
    if scheduler is torch.optim.lr_scheduler.OneCycleLR:
        options.update(max_lr=optimizer.param_groups[0]["lr"], total_steps=total_steps)
    return scheduler(optimizer, **options), lightning_keys


def _named_problems(where: str, settings: Any, table: Mapping[str, type]) -> tuple[list[str], Any]:
    settings = plain_container(settings)
    if not isinstance(settings, Mapping):
        return [f"{where}={settings}: must be settings with a name"], None
    name = settings.get("name")
    if name not in table:
        return [f"{where}.name={name}: must be one of {', '.join(table)}"], None
    return [], table[name]


def optimizer_problems(where: str, settings: Any, objects: bool = True) -> list[str]:
    """The problems of an optimizer's settings (name, and its class's own arguments);
    `objects=False` for a file read back (schema.class_problems)."""
    found, cls = _named_problems(where, settings, OPTIMIZERS)
    if cls is None:
        return found
    options = {k: v for k, v in settings.items() if k != "name"}
    return class_problems(where, cls, options, ignore=("params",), objects=objects)


def scheduler_problems(where: str, settings: Any, objects: bool = True) -> list[str]:
    """The problems of a scheduler's settings; none for no scheduler (None or empty)."""
    if not settings:
        return []
    if "name" not in settings:  # e.g. +scheduler.frequency=2 on scheduler=none
        given = " ".join(f"{where}.{k}={v}" for k, v in plain_container(settings).items())
        return [
            f"{given} is set without a scheduler: choose one as well, e.g. scheduler=step "
            f"({', '.join(SCHEDULERS)})"
        ]
    found, cls = _named_problems(where, settings, SCHEDULERS)
    if cls is None:
        return found
    given = ONECYCLE_FROM_THE_RUN if cls is torch.optim.lr_scheduler.OneCycleLR else ()
    options = {
        k: v for k, v in settings.items() if k != "name" and k not in LIGHTNING_SCHEDULER_KEYS
    }
    ignore = ("optimizer", "last_epoch", *given)
    return class_problems(where, cls, options, ignore=ignore, objects=objects)
