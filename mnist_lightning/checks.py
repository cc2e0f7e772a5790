"""What a valid training config is, checked before any work: one line per problem.

Three layers, each by structure rather than by case: typed schemas (OmegaConf structured
configs) for the types of the data, model and top-level settings and for misspelt keys; a table
of ranges; and building the optimizer, scheduler, augmentation, model and trainer from the
config, whose constructors' own errors become that one line.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lightning.errors import ConfigError, UserError

MNIST_TRAIN_IMAGES = 60_000


# --- types ---------------------------------------------------------------------------------


@dataclass
class DataSchema:
    _target_: str = "mnist_lightning.data.datamodule.MNISTDataModule"
    data_dir: str | None = None
    val_size: int = 5_000
    batch_size: int = 64
    eval_batch_size: int = 1_000
    shuffle: bool = True
    normalize: bool = True
    split_seed: int = 0
    download: bool = True
    mirrors: list[str] = field(default_factory=list)
    expected_files: Any = None


@dataclass
class ModelSchema:
    _target_: str = "mnist_lightning.models.classifier.MNISTClassifier"
    net: Any = None
    activation: str = "sigmoid"
    label_smoothing: float = 0.0
    compile: bool = False


@dataclass
class RunSchema:
    """The top-level settings of conf/train.yaml (the groups are checked on their own)."""

    seed: int = 42
    cpu_threads: int | None = 1
    lr_find: bool = False
    test: bool = True
    optimized_metric: str = "val/acc_best"
    resume: str | None = None
    ckpt_path: str | None = None


SCHEMAS = {"data": DataSchema, "model": ModelSchema, "": RunSchema}


def _type_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for section, schema in SCHEMAS.items():
        node = cfg.get(section) if section else cfg
        if not isinstance(node, DictConfig):
            continue
        known = [f.name for f in fields(schema)]
        base = OmegaConf.structured(schema)
        keys = node.keys() if section else [f.name for f in fields(schema) if f.name in node]
        for key in keys:
            name = f"{section}.{key}" if section else str(key)
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = (
                    f"did you mean {section}.{close[0]}?"
                    if close
                    else f"the settings are {', '.join(k for k in known if k != '_target_')}"
                )
                problems.append(f"{name}: no such setting; {hint}")
                continue
            try:
                OmegaConf.merge(base, {key: node[key]})
            except OmegaConfBaseException:
                kind = next(f.type for f in fields(schema) if f.name == key)
                problems.append(f"{name}={node[key]}: must be {_describe(kind)}")
    return problems


def _describe(kind) -> str:
    text = str(kind)
    return {
        "int": "a whole number",
        "float": "a number",
        "bool": "true or false",
        "str": "text",
        "int | None": "a whole number, or null",
        "str | None": "text, or null",
        "list[str]": "a list",
    }.get(text, text)


# --- ranges --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def whole(low: int, high: int | None = None, null: bool = False) -> Rule:
    def ok(v) -> bool:
        if v is None:
            return null
        return (
            isinstance(v, int)
            and not isinstance(v, bool)
            and v >= low
            and (high is None or v <= high)
        )

    span = f"between {low:,} and {high:,}" if high is not None else f"at least {low}"
    return Rule(ok, f"a whole number {span}" + (", or null" if null else ""))


def number(
    low: float, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Rule:
    def ok(v) -> bool:
        if not _number(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    left = f"above {low:g}" if low_open else f"at least {low:g}"
    right = "" if high is None else f" and {'below' if high_open else 'at most'} {high:g}"
    return Rule(ok, f"a finite number {left}{right}")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, f"one of {', '.join(choices)}")


def _activations() -> tuple[str, ...]:
    from mnist_lightning.models.networks import ACTIVATIONS

    return tuple(ACTIVATIONS)


RULES: dict[str, Rule | Callable[[], Rule]] = {
    "seed": whole(0),
    "cpu_threads": whole(1, null=True),
    "data.val_size": whole(1, MNIST_TRAIN_IMAGES - 1),
    "data.batch_size": whole(1),
    "data.eval_batch_size": whole(1),
    "data.split_seed": whole(0),
    "model.activation": lambda: one_of(*_activations()),
    "model.label_smoothing": number(0, 1, high_open=True),
    "optimizer.lr": number(0, low_open=True),
    "trainer.max_epochs": whole(1),
    "trainer.log_every_n_steps": whole(0),
    "scheduler.interval": one_of("epoch", "step"),
    "scheduler.frequency": whole(1),
    "scheduler.step_size": whole(1),
    "scheduler.gamma": number(0, low_open=True),
    "scheduler.T_max": whole(1),
    "scheduler.eta_min": number(0),
    "scheduler.pct_start": number(0, 1, low_open=True, high_open=True),
    "scheduler.factor": number(0, 1, low_open=True, high_open=True),
    "scheduler.patience": whole(0),
    "augment.degrees": number(0, 180),
    "augment.translate": number(0, 1),
    "augment.shear": number(0, 89),
    "augment.elastic_alpha": number(0),
    "augment.elastic_sigma": number(0, low_open=True),
    "augment.elastic_bank": whole(1),
}


def _range_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if isinstance(value, str) and value == "<absent>":
            continue
        rule = rule() if not isinstance(rule, Rule) else rule
        if not rule.ok(value):
            problems.append(f"{key}={value}: must be {rule.allowed}")
    return problems


def _monitor_problems(cfg: DictConfig) -> list[str]:
    """Metric names that callbacks and the scheduler watch must be ones the model logs."""
    from mnist_lightning.models.classifier import LOGGED_METRICS

    watched = {"scheduler.monitor": OmegaConf.select(cfg, "scheduler.monitor")}
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig):
            watched[f"callbacks.{name}.monitor"] = node.get("monitor")
    watched["optimized_metric"] = cfg.get("optimized_metric")
    return [
        f"{key}={value}: not a metric this model logs; choose one of {', '.join(LOGGED_METRICS)}"
        for key, value in watched.items()
        if value is not None and value not in LOGGED_METRICS
    ]


def _scheduler_problems(cfg: DictConfig) -> list[str]:
    scheduler = cfg.get("scheduler") or {}
    if scheduler and "_target_" not in scheduler:  # e.g. +scheduler.frequency=2 on `none`
        settings = " ".join(f"scheduler.{k}={v}" for k, v in scheduler.items())
        return [
            f"{settings} is set without a scheduler: choose one as well, "
            "e.g. scheduler=step (step, cosine, onecycle or plateau)"
        ]
    return []


def _data_dir_problems(cfg: DictConfig) -> list[str]:
    data_dir = OmegaConf.select(cfg, "data.data_dir")
    if data_dir and Path(str(data_dir)).expanduser().is_file():
        return [f"data.data_dir={data_dir}: is a file; it must be a folder holding MNIST/raw/"]
    return []


def _setting(problem: str) -> str:
    return problem.split("=")[0].split(":")[0]


def check_training_config(cfg: DictConfig) -> None:
    """Refuse values that cannot work, before loading data or building anything."""
    problems = _type_problems(cfg)
    wrong_type = {_setting(p) for p in problems}  # a range means nothing for a wrong type
    problems += [p for p in _range_problems(cfg) if _setting(p) not in wrong_type]
    problems += _scheduler_problems(cfg) + _monitor_problems(cfg) + _data_dir_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))


# --- building ------------------------------------------------------------------------------


def _named(group: str, overrides: list[str]) -> str:
    """The overrides a user gave for a group, to name in a message (else the group)."""
    given = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] == group]
    return " ".join(given) or group


def check_buildable(cfg: DictConfig, overrides: list[str]) -> None:
    """Build the optimizer, scheduler and augmentation from the config on a stand-in parameter,
    so that their constructors' own checks speak before the data is loaded."""
    import torch
    from hydra.utils import instantiate

    from mnist_lightning.models.classifier import build_scheduler

    parameter = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = instantiate(cfg.optimizer)(params=[parameter])
    except Exception as error:  # noqa: BLE001 - any constructor error is the user's value
        raise ConfigError(f"{_named('optimizer', overrides)}: {_first_line(error)}") from None
    if cfg.get("scheduler"):
        try:
            config = OmegaConf.to_container(cfg.scheduler, resolve=True)
            scheduler, _ = build_scheduler(optimizer, config, total_steps=10)
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()  # some values fail only when the schedule is used
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f"{_named('scheduler', overrides)}: {_first_line(error)}") from None
    if cfg.get("augment"):
        try:
            instantiate(cfg.augment)(torch.zeros(2, 1, 28, 28))
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f"{_named('augment', overrides)}: {_first_line(error)}") from None


# The optional-dependency group (pyproject.toml) that a config group's options may need.
OPTIONAL_EXTRAS = {"logger": "tracking"}


def _constructor_error(error: BaseException) -> BaseException:
    # Hydra's instantiate wraps a constructor's error ("Error in call to target ..."): the
    # constructor's own error is the one that says what is wrong.
    while error.__cause__ is not None and type(error).__name__ == "InstantiationException":
        error = error.__cause__
    return error


def _first_line(error: BaseException) -> str:
    error = _constructor_error(error)
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unknown_argument(group: str, error: BaseException, target: str | None) -> str | None:
    """For `+trainer.max_epoch=3`: which argument was meant."""
    message = _first_line(error)
    match = re.search(r"unexpected keyword argument '(\w+)'", message)
    if not match or not target:
        return None
    from hydra.utils import get_class

    known = list(inspect.signature(get_class(target)).parameters)
    close = difflib.get_close_matches(match.group(1), known, n=1)
    hint = f"; did you mean {group}.{close[0]}?" if close else ""
    return f"{group}.{match.group(1)}: no such setting{hint}"


@contextmanager
def building(group: str, overrides: list[str], target: str | None = None) -> Iterator[None]:
    """A constructor's error while building `group` (data, model, trainer, callbacks, loggers)
    becomes one line naming what the user set for it."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any constructor error is the user's value
        if isinstance(_constructor_error(error), ImportError):  # an optional package is missing
            extra = OPTIONAL_EXTRAS.get(group, "dev")
            raise ConfigError(
                f"{_named(group, overrides)} needs the '{extra}' extra ({_first_line(error)}); "
                f"install it with: pip install -e '.[{extra}]'"
            ) from None
        message = _unknown_argument(group, error, target)
        raise ConfigError(message or f"{_named(group, overrides)}: {_first_line(error)}") from None


def check_output_dir(path: str | Path) -> Path:
    """Make sure results can be written, before training starts rather than after."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write the run folder {path} ({error.strerror or error}). Free some space, fix its "
            "permissions, or choose another with hydra.run.dir=<folder>."
        ) from None
    if not os.access(path, os.W_OK):
        raise UserError(
            f"cannot write the run folder {path}; choose another with hydra.run.dir=<folder>"
        )
    return path
