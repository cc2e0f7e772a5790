"""The command-line door: every setting, typed once, in pydantic (strict).

- A class's settings are its constructor's parameters, as a pydantic model
  (`class_settings(cls)`), to check a whole config, or a checkpoint's settings, before anything
  is built. Their types and ranges are the constructor's annotations, or, where this module
  says more, its own: the project's classes take plain values (OWN_RANGES, at the end), and
  Lightning's and torch's get the ranges they leave to the fit (`library_ranges`).
- Networks, optimizers and schedulers are unions chosen by `name` (`NamedSettings`).

The door's other two modules: doors/problems.py turns pydantic's errors into one line per
setting, and doors/options.py types each command's own options.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Optional, Union

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    create_model,
)

from mnist_lightning.data.augment import BatchAugment
from mnist_lightning.models.metrics import LOGGED_METRICS
from mnist_lightning.models.networks import ACTIVATIONS, NETWORKS
from mnist_lightning.models.optim import ONECYCLE_FROM_THE_RUN, OPTIMIZERS, SCHEDULERS

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
# Whole numbers a setting may hold: never more than a 64-bit integer (a 5,000-digit number is
# refused here rather than deep in torch).
MAX_WHOLE = 2**63 - 1
SEED = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what NumPy and Lightning seed with


def _logged(name: str) -> str:
    if name not in LOGGED_METRICS:
        raise ValueError(f"not a metric this model logs; choose one of {', '.join(LOGGED_METRICS)}")
    return name


METRIC = Annotated[str, AfterValidator(_logged)]  # a metric the model logs (val/acc)

# --- plain data -------------------------------------------------------------------------------


def is_plain(value: Any) -> bool:
    """Names and numbers only: None, bool, int, float, str (no interpolation), and lists or
    string-keyed mappings of them. What a setting or a record may hold."""
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return "${" not in value
    if isinstance(value, list | tuple | ListConfig):
        return all(is_plain(v) for v in value)
    if isinstance(value, Mapping | DictConfig):
        # A key of Hydra's own (`_target_`, `_args_`) would make the mapping code to run.
        return all(
            isinstance(k, str) and not k.startswith("_") and is_plain(v) for k, v in value.items()
        )
    return False


def is_number(value: Any) -> bool:
    """An int or a float (not a bool, which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_object_config(value: Any) -> bool:
    """A node Hydra builds into an object (`_target_`), or a list of them (trainer.plugins)."""
    if isinstance(value, Mapping | DictConfig):
        return "_target_" in value
    if isinstance(value, list | tuple | ListConfig):
        return bool(value) and all(is_object_config(v) for v in value)
    return False


def plain_container(node: Any) -> Any:
    """A config node (or anything) as plain dicts and lists, interpolations resolved."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


# --- types from constructors ----------------------------------------------------------------


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _lenient_sequences(annotation: Any) -> Any:
    """A tuple parameter (Adam's betas) takes the list a config writes, too."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return Annotated[annotation, BeforeValidator(_as_tuple)]
    if origin is Annotated:
        return Annotated[(_lenient_sequences(args[0]), *args[1:])]
    if origin in (Union, types.UnionType):
        return Union[tuple(_lenient_sequences(a) for a in args)]  # noqa: UP007 - built from args
    return annotation


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: untyped
        return {}


def _parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The constructor's keyword parameters, and whether it takes any other (**kwargs)."""
    named, open_ended = {}, False
    for name, parameter in inspect.signature(cls).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            named[name] = parameter
    return named, open_ended


@functools.cache
def class_settings(
    cls: type, skip: tuple[str, ...] = (), name: str | None = None, extra: tuple = ()
) -> type:
    """`cls`'s constructor parameters as a strict pydantic model (the arguments in `skip`
    aside), with `library_ranges`; `name`: a member of a union chosen by name; `extra`:
    (key, annotation, default) of settings that go beside the constructor's."""
    parameters, open_ended = _parameters(cls)
    hints, ranges = _hints(cls), library_ranges(cls)
    fields: dict[str, Any] = {}
    for key, parameter in parameters.items():
        if key in skip:
            continue
        annotation = ranges.get(key, hints.get(key, Any))
        default = parameter.default
        fields[key] = (
            _lenient_sequences(annotation),
            ... if default is inspect.Parameter.empty else default,
        )
    fields.update({key: (annotation, default) for key, annotation, default in extra})
    if name is not None:
        fields["name"] = (Literal[name], ...)
    config = ConfigDict(**{**STRICT, "extra": "allow" if open_ended else "forbid"})
    return create_model(f"{cls.__name__}Settings", __config__=config, **fields)


def plain_settings(cls: type, skip: tuple[str, ...] = ()) -> Any:
    """`cls`'s settings as a constructor's annotation: a plain dict (hyperparameters stay data),
    checked against `class_settings(cls)`."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        class_settings(cls, skip).model_validate(value)
        return value

    return Annotated[dict[str, Any], AfterValidator(check), SettingsOf(cls, skip)]


class SettingsOf(typing.NamedTuple):
    """The marker `plain_settings` leaves on its annotation, for `problems` to describe."""

    cls: type
    skip: tuple[str, ...]


def admits_plain(annotation: Any) -> bool:
    """Whether a value of this type may be a name or a number (or a list of them)."""
    if annotation in (bool, int, float, str, type(None), Any):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return admits_plain(args[0])
    if origin is Literal:
        return any(a is None or isinstance(a, bool | int | float | str) for a in args)
    if origin in (Union, types.UnionType):
        return any(admits_plain(a) for a in args)
    if origin in (list, tuple, Sequence):
        return all(a is Ellipsis or admits_plain(a) for a in args)
    return False


class CustomClass(BaseModel):
    """A class of the user's own (`_target_`), with its settings: only a command line names one
    (a file read back that does is refused where it is read)."""

    model_config = ConfigDict(**{**STRICT, "extra": "allow"})
    target: str = Field(alias="_target_")


class NamedSettings:
    """A table of classes chosen by name (`{"name": "adam", "lr": 0.001}`) as one pydantic
    union, whose members are the classes' settings (`skip`: what the project gives them;
    `extra`: settings beside the constructor's); `custom`: a `_target_` of the user's own may be
    a member too. A value that passes is kept as the plain dict it was, so that hyperparameters
    stay data."""

    def __init__(
        self,
        kind: str,
        table: Mapping[str, type],
        skip: tuple[str, ...] = (),
        extra: tuple = (),
        custom: bool = False,
    ) -> None:
        self.kind, self.table, self.skip, self.extra = kind, table, skip, extra
        members = [
            Annotated[class_settings(cls, skip, name, extra), Tag(name)]
            for name, cls in table.items()
        ]
        if custom:
            members.append(Annotated[CustomClass, Tag("custom")])
        union = Annotated[Union[tuple(members)], Discriminator(chosen_name)]  # noqa: UP007
        self.adapter = TypeAdapter(union)

    def member(self, value: Any) -> Any:
        """The settings model `value` is checked against, or None (no known name)."""
        name = chosen_name(value)
        if name == "custom":
            return CustomClass
        cls = self.table.get(name) if isinstance(name, str) else None
        return None if cls is None else class_settings(cls, self.skip, name, self.extra)

    def check(self, value: dict[str, Any]) -> dict[str, Any]:
        self.adapter.validate_python(value)
        return value

    def annotation(self) -> Any:
        """The settings as a constructor's annotation: a plain dict, checked against the union."""
        return Annotated[dict[str, Any], AfterValidator(self.check), self]


def chosen_name(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    return "custom" if "_target_" in value else value.get("name")


# --- the ranges the libraries check only later (in the fit, or never) ---------------------------


def _epochs(value: int | None) -> int | None:
    if value is not None and value < 1 and value != -1:
        raise ValueError("must be a whole number at least 1, -1 (no limit), or null")
    return value


@functools.cache
def _torch_ranges() -> dict[type, dict[str, Any]]:
    learning_rate = {"lr": Annotated[float, Field(gt=0)]}
    optimizers = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)
    optimizers += (torch.optim.Adagrad, torch.optim.Adadelta)
    schedulers = torch.optim.lr_scheduler
    whole = Annotated[int, Field(ge=1, le=MAX_WHOLE)]
    fraction = Annotated[float, Field(gt=0, lt=1)]
    return {
        **{cls: learning_rate for cls in optimizers},
        schedulers.StepLR: {"step_size": whole, "gamma": Annotated[float, Field(gt=0)]},
        schedulers.CosineAnnealingLR: {"T_max": whole, "eta_min": Annotated[float, Field(ge=0)]},
        schedulers.OneCycleLR: {"pct_start": fraction},
        schedulers.ReduceLROnPlateau: {
            "factor": fraction,
            "patience": Annotated[int, Field(ge=0, le=MAX_WHOLE)],
        },
    }


@functools.cache
def _lightning_ranges() -> dict[type, dict[str, Any]]:
    # Lightning is imported here, not at the top: predict, export and serve check settings too
    # and must not wait for it to load; only train and evaluate, which import it anyway, check
    # a class of Lightning's.
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    metric = Optional[METRIC]  # noqa: UP045
    return {
        Trainer: {
            # Lightning's meanings: null is 1,000 epochs unless max_steps or max_time bounds the
            # run, -1 no limit (0 would train nothing).
            "max_epochs": Annotated[Optional[int], AfterValidator(_epochs)],  # noqa: UP045
            "max_steps": Annotated[int, Field(ge=-1, le=MAX_WHOLE)],
            "log_every_n_steps": Annotated[int, Field(ge=0, le=MAX_WHOLE)],
            "accumulate_grad_batches": Annotated[int, Field(ge=1, le=MAX_WHOLE)],
            "val_check_interval": Optional[  # noqa: UP045
                Union[  # noqa: UP007
                    Annotated[int, Field(ge=1, le=MAX_WHOLE)],
                    Annotated[float, Field(gt=0, le=1)],
                    str,
                    datetime.timedelta,
                ]
            ],
            "check_val_every_n_epoch": Optional[Annotated[int, Field(ge=1, le=MAX_WHOLE)]],  # noqa: UP045
        },
        EarlyStopping: {
            "monitor": metric,
            "divergence_threshold": Optional[Annotated[float, Field(gt=0)]],  # noqa: UP045
        },
        ModelCheckpoint: {"monitor": metric},
    }


def library_ranges(cls: type) -> dict[str, Any]:
    """The types and ranges of the project's own classes (OWN_RANGES), and those of torch's and
    Lightning's classes that their constructors leave to later (the fit fails after the run's
    files are written, or a value is taken that means nothing)."""
    if cls.__module__.startswith("mnist_lightning."):
        return OWN_RANGES.get(f"{cls.__module__}.{cls.__qualname__}", {})
    if cls.__module__.startswith("torch."):
        return _torch_ranges().get(cls, {})
    if cls.__module__.startswith("lightning."):
        return _lightning_ranges().get(cls, {})
    return {}


# --- the project's own classes: their types and ranges --------------------------------------
# The learner's files (the LightningModule, the DataModule, the networks, the augmentation)
# take plain values, as Lightning's examples do; what each setting may be is said here once,
# beside torch's and Lightning's, and checked before anything is built (check.py, the
# checkpoint door).


def _zoom(scale: Sequence[float]) -> Sequence[float]:
    if not 0 < scale[0] <= scale[1]:
        raise ValueError("must be [low, high] with 0 < low <= high")
    return scale


ACTIVATION = Literal[tuple(ACTIVATIONS)]
MAXOUT_PIECES = Annotated[int, Field(ge=2, le=16)]
BATCH_SIZE = Annotated[int, Field(ge=1, le=1_000_000)]
ZOOM = Annotated[  # [low, high] zoom factors
    Sequence[Annotated[float, Field(gt=0, le=10)]],
    Field(min_length=2, max_length=2),
    AfterValidator(_zoom),
]
CHANNELS = Annotated[
    Sequence[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=3, max_length=3)
]

OWN_RANGES: dict[str, dict[str, Any]] = {
    "mnist_lightning.models.networks.MLP": {"activation": str},
    "mnist_lightning.models.networks.CNN": {"activation": str, "channels": CHANNELS},
    "mnist_lightning.data.augment.BatchAugment": {
        "degrees": Annotated[float, Field(ge=0, le=180)],
        "translate": Annotated[float, Field(ge=0, le=1)],
        "scale": ZOOM,
        "shear": Annotated[float, Field(ge=0, le=89)],
        "elastic_alpha": Annotated[float, Field(ge=0, le=1_000)],
        "elastic_sigma": Annotated[float, Field(gt=0, le=100)],
        "elastic_bank": Annotated[int, Field(ge=1, le=16_384)],
    },
}

# Optimizers, schedulers and networks are chosen by name, with their own settings.
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
# A model's `net`: one of NETWORKS by name (activation and maxout_pieces are the model's), or a
# class of the user's own (`_target_`, model/net=custom).
NETWORK_SETTINGS = NamedSettings(
    "network", NETWORKS, skip=("activation", "maxout_pieces"), custom=True
)
NETWORK = Optional[NETWORK_SETTINGS.annotation()]  # noqa: UP045

OWN_RANGES.update(
    {
        "mnist_lightning.models.classifier.MNISTClassifier": {
            "activation": ACTIVATION,
            "net": NETWORK,
            "optimizer": Optional[OPTIMIZER_SETTINGS.annotation()],  # noqa: UP045
            "scheduler": Optional[SCHEDULER_SETTINGS.annotation()],  # noqa: UP045
            "maxout_pieces": MAXOUT_PIECES,
            "label_smoothing": Annotated[float, Field(ge=0, lt=1)],
        },
        "mnist_lightning.models.networks.TrainedNetwork": {
            "activation": ACTIVATION,
            "net": NETWORK,
            "maxout_pieces": MAXOUT_PIECES,
        },
        "mnist_lightning.data.datamodule.MNISTDataModule": {
            "val_size": Annotated[int, Field(ge=1, le=59_999)],  # of the 60,000 training images
            "batch_size": BATCH_SIZE,
            "eval_batch_size": BATCH_SIZE,
            "split_seed": Annotated[int, Field(ge=0, le=MAX_WHOLE)],
            "augment": Optional[plain_settings(BatchAugment)],  # noqa: UP045
        },
    }
)
