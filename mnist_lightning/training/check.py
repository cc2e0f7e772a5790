"""The train command's check of its config, before anything is written or built: every setting
typed (doors/settings.py), the combinations Lightning or torch would only refuse in the middle
of the fit, and each part built once on a scratch copy; one line per problem. What passes
becomes the run's one settings object (settings.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from mnist_lightning.config import override_key
from mnist_lightning.data.augment import BatchAugment
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.doors.checkpoints import custom_network_problems
from mnist_lightning.doors.problems import (
    class_problems,
    import_problem,
    problems,
    settings_values,
)
from mnist_lightning.doors.settings import class_settings, plain_container
from mnist_lightning.errors import (
    ConfigError,
    UserError,
    first_line,
    one_line,
)
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.models.optim import build_optimizer, build_scheduler
from mnist_lightning.settings import TrainOptions, TrainSettings, TrainShape, accelerator_problem
from mnist_lightning.training.combinations import COMBINATIONS

# The config's parts beside the train command's own options (TrainOptions).
GROUPS = ("paths", "data", "augment", "model", "optimizer", "scheduler", "trainer", "callbacks")
GROUPS += ("logger", "hydra")
# The config group a missing optional package belongs to, and the extra that installs it.
OPTIONAL_EXTRAS = {"logger": "tracking"}


def _needs_extra(where: str, error: object, default: str | None = None) -> str | None:
    """The line for a missing optional package, when `where` (logger.mlflow) has an extra."""
    extra = OPTIONAL_EXTRAS.get(where.split(".")[0], default)
    if extra is None:
        return None
    return (
        f"{where} needs the '{extra}' extra ({error}); install it with: pip install -e '.[{extra}]'"
    )


def _target_problems(where: str, node: dict) -> list[str]:
    """`class_problems` of a config node with a `_target_` (from conf/ or the command line)."""
    target = node.get("_target_")
    if not isinstance(target, str):
        return [f"{where}._target_={target}: must be the name of a class (package.module.Class)"]
    try:
        cls = get_class(target)
    except (ImportError, ValueError) as error:
        if isinstance(error, ImportError) and (needed := _needs_extra(where, error)):
            return [needed]
        return [import_problem(where, target, error)]
    return class_problems(where, cls, node)


def _model_problems(config: dict) -> list[str]:
    """The model's settings (model.*, with the optimizer and the scheduler, which are its
    arguments but config groups of their own) as MNISTClassifier's."""
    values = settings_values(config["model"])
    values["optimizer"] = config["optimizer"]
    values["scheduler"] = config.get("scheduler") or None
    net = values["net"] = config["model"].get("net")
    if isinstance(net, dict) and net.get("_target_") == "???":
        return ["model.net._target_: missing; name your class: model.net._target_=pkg.MyNet"]
    found = []
    if isinstance(net, dict) and "_target_" in net:  # a class the command line names
        found += custom_network_problems("model.net", net, named_target=net["_target_"])
        values["net"] = None if found else {"_target_": net["_target_"]}
    found += problems("model", class_settings(MNISTClassifier), values)
    # The optimizer and scheduler are config groups of their own: model.optimizer.lr is
    # optimizer.lr on the command line.
    return [
        p.replace("model.optimizer", "optimizer").replace("model.scheduler", "scheduler")
        for p in found
    ]


def _setting(problem: str) -> str:
    return re.split(r"[=: ]", problem, maxsplit=1)[0]


def _echoes(cfg: DictConfig, setting: str, wrong: set[str]) -> bool:
    """Whether `setting` only repeats a setting already reported, through an interpolation the
    user never typed (`T_max: ${trainer.max_epochs}`)."""
    parent, _, key = setting.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or key not in node:
        return False
    if not OmegaConf.is_interpolation(node, key):
        return False
    source = OmegaConf.to_container(node, resolve=False)[key]
    return source.removeprefix("${").removesuffix("}") in wrong


def check(
    cfg: DictConfig, overrides: Sequence[str] = (), choices: dict[str, Any] | None = None
) -> TrainSettings:
    """Every bad value of the config, one line each, before any data is read or file written:
    its shape, the command's options and each group as its class's settings
    (doors/settings.py: types, ranges, the metric names watched); the settings that only make
    sense together; then the optimizer and scheduler built on a stand-in parameter, so that
    torch's own checks of their values speak now rather than in the fit. Whatever a config holds,
    the check ends in lines, never in a traceback. What passes is returned as the run's
    settings, with the `choices` per config group and the `overrides` that made it."""
    try:
        found = _problems(cfg)
    except Exception as error:  # noqa: BLE001 - a config no check foresaw is still one line
        found = [f"the config cannot be read ({type(error).__name__}: {first_line(error)[:200]})"]
    if found:
        raise ConfigError("\n".join(one_line(line) for line in found))
    _check_buildable(cfg, list(overrides))
    config = {str(key): plain_value(cfg, str(key)) for key in cfg if key != "hydra"}
    composed = OmegaConf.to_container(cfg, resolve=False)
    composed.pop("hydra", None)
    return TrainSettings.model_validate(
        {
            **config,
            "augment": config.get("augment") or None,  # (an empty group: none)
            "scheduler": config.get("scheduler") or None,
            "callbacks": config.get("callbacks") or {},
            "logger": config.get("logger") or {},
            "choices": choices or {},
            "overrides": list(overrides),
            "composed": composed,
        }
    )


def plain_value(cfg: DictConfig, key: str) -> Any:
    """`cfg[key]` as plain values, interpolations resolved, `???` kept as it is."""
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    return node


def _problems(cfg: DictConfig) -> list[str]:
    # Plain values: a setting left missing (???) is a value to check here, not an error.
    config = {str(key): plain_value(cfg, str(key)) for key in cfg if key != "hydra"}
    found = problems("", TrainShape, {k: v for k, v in config.items() if k in GROUPS})
    if found:  # the groups themselves are not what conf/ makes them
        return found
    options = {k: v for k, v in config.items() if k not in GROUPS}
    found = problems("", TrainOptions, options)
    found += class_problems("data", MNISTDataModule, config["data"], skip=("augment",))
    if config.get("augment"):
        found += class_problems("augment", BatchAugment, config["augment"])
    found += _model_problems(config)
    found += _target_problems("trainer", config["trainer"])
    for group in ("callbacks", "logger"):
        for name, node in (config.get(group) or {}).items():
            if isinstance(node, dict) and "_target_" in node:
                found += _target_problems(f"{group}.{name}", node)
    for problem in (rule(cfg) for rule in COMBINATIONS):
        if problem and not found:  # (they read values that must be right first)
            found.append(problem)
    wrong = {_setting(p) for p in found}
    found = [p for p in found if not _echoes(cfg, _setting(p), wrong - {_setting(p)})]
    accelerator = config["trainer"].get("accelerator")
    if problem := accelerator_problem("trainer.accelerator", accelerator):
        found.append(problem)
    data_dir = config["data"].get("data_dir")
    if data_dir and Path(str(data_dir)).expanduser().is_file():
        found.append(f"data.data_dir={data_dir}: is a file; it must be a folder holding MNIST/raw/")
    return found


def _named(group: str, overrides: list[str]) -> str:
    """The overrides a user gave for a group, to name in a message (else the group)."""
    given = [o for o in overrides if override_key(o).split(".")[0] == group]
    return " ".join(given) or group


def _check_buildable(cfg: DictConfig, overrides: list[str]) -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    with building("optimizer", overrides):
        optimizer = build_optimizer([parameter], plain_container(cfg.optimizer))
    if cfg.get("scheduler"):
        with building("scheduler", overrides):
            scheduler, _ = build_scheduler(optimizer, plain_container(cfg.scheduler), 10)
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()  # some values fail only when the schedule is used


@contextmanager
def building(group: str, overrides: list[str] = ()) -> Iterator[None]:
    """A constructor's error while building `group` becomes one line naming what the user set
    for it (`optimizer.momentum=-1: Invalid momentum value: -1`)."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any constructor error is the user's value
        # Hydra's instantiate wraps a constructor's error: the constructor's own says what is wrong.
        while isinstance(error, InstantiationException) and error.__cause__ is not None:
            error = error.__cause__
        if isinstance(error, ImportError):  # an optional package is missing
            raise ConfigError(_needs_extra(group, first_line(error), "dev")) from None
        raise ConfigError(f"{_named(group, list(overrides))}: {first_line(error)}") from None
