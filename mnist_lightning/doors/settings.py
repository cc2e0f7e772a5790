"""The command-line door: every setting, typed once, in pydantic (strict).

- A class's settings are its constructor's parameters, typed by their annotations, with their
  ranges beside them as pydantic constraints (`Annotated[int, Field(ge=1)]`). The project's own
  classes check them where they are built (`@validate_call(config=STRICT)`), so the same ranges
  hold from Python, from Hydra and from a checkpoint. `class_settings(cls)` is the same
  signature as a model, to check a whole config before anything is built; Lightning's classes
  and torch's get the ranges they leave to the fit (`library_ranges`) there.
- Networks, optimizers and schedulers are unions chosen by `name` (`named_settings`).
- A command's own options are the models at the end.
- `problems` turns pydantic's errors into the project's one line per setting: the config path,
  the value, what is allowed, and "did you mean" for a name that is no setting.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import inspect
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Optional, Union

import annotated_types
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
    ValidationError,
    create_model,
)

from mnist_lightning.errors import ConfigError, first_line, one_line
from mnist_lightning.models.metrics import LOGGED_METRICS

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


def takes_plain_value(cls: type, key: str) -> bool:
    """Whether `cls`'s constructor takes `key` as a name or a number (or a list of them): a
    setting that a value read back from a file may set."""
    parameters, _ = _parameters(cls)
    return key in parameters and admits_plain(_hints(cls).get(key, Any))


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
        union = Annotated[Union[tuple(members)], Discriminator(_by_name)]  # noqa: UP007
        self.adapter = TypeAdapter(union)

    def member(self, value: Any) -> Any:
        """The settings model `value` is checked against, or None (no known name)."""
        name = _by_name(value)
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


def _by_name(value: Any) -> str | None:
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
    """The ranges of torch's and Lightning's classes that their constructors leave to later (the
    fit fails after the run's files are written, or a value is taken that means nothing)."""
    if cls.__module__.startswith("torch."):
        return _torch_ranges().get(cls, {})
    if cls.__module__.startswith("lightning."):
        return _lightning_ranges().get(cls, {})
    return {}


def accelerator_problem(where: str, accelerator: Any) -> str | None:
    """An accelerator this machine does not have, as one line saying what to use instead (train,
    evaluate and serve). Lightning would stop in a traceback, LitServe wait for a worker that never
    starts."""
    # torch's own checks (Lightning's accelerators ask the same), so serve needs no Lightning.
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    available["gpu"] = available["cuda"] or available["mps"]
    if not isinstance(accelerator, str) or available.get(accelerator, True):
        return None
    device = "GPU" if accelerator == "gpu" else f"{accelerator.upper()} device"
    return (
        f"{where}={accelerator}: this machine has no {device} that torch can use; use "
        f"{where}=auto (the best it has) or {where}=cpu"
    )


# --- errors as one line per setting -------------------------------------------------------


def _shown(value: Any) -> str:
    """A value as a problem's line shows it: as typed, null, or JSON; at most 80 characters."""
    if value is None:
        text = "null"
    elif isinstance(value, str | bool | int | float):
        text = str(value)
    else:
        text = json.dumps(plain_container(value), default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def _bounds(metadata: list[Any]) -> str:
    low = high = None
    for item in metadata:
        for bound in getattr(item, "metadata", [item]):
            if isinstance(bound, annotated_types.Ge):
                low = f"at least {bound.ge:,}"
            elif isinstance(bound, annotated_types.Gt):
                low = f"above {bound.gt:,}"
            elif isinstance(bound, annotated_types.Le) and bound.le < MAX_WHOLE:
                high = f"at most {bound.le:,}"
            elif isinstance(bound, annotated_types.Lt):
                high = f"below {bound.lt:,}"
    if low and high and low.startswith("at least") and high.startswith("at most"):
        return f" between {low.removeprefix('at least ')} and {high.removeprefix('at most ')}"
    return "".join(f" {b}" for b in (low, high and (f"and {high}" if low else high)) if b)


def describe(annotation: Any) -> str:
    """What a setting of this type may be, in words."""
    annotation, metadata = _unwrap(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    named = next((m for m in metadata if isinstance(m, NamedSettings)), None)
    if named is not None:
        return f"{named.kind} settings with a name, one of {', '.join(named.table)}"
    settings_of = next((m for m in metadata if isinstance(m, SettingsOf)), None)
    if settings_of is not None:
        return f"{settings_of.cls.__name__}'s settings"
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        null = ", or null" if len(rest) < len(args) else ""
        plain = [a for a in rest if admits_plain(a) and a is not str]
        if len(rest) == 1:
            return describe(rest[0]) + null
        if all(typing.get_origin(a) is Literal for a in rest):  # Lightning's precision
            names = dict.fromkeys(str(v) for a in rest for v in typing.get_args(a))
            return "one of " + ", ".join(names) + null
        bare = all(typing.get_origin(a) is not Annotated for a in plain)
        if plain and bare and all(_base(a) in (int, float) for a in plain):
            return "a number" + null
        return ", or ".join(describe(a) for a in rest if admits_plain(a) and a is not str) + null
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple, Sequence):
        inner = describe(args[0]) if args and args[0] is not Ellipsis else "a name or a number"
        for one, many in PLURALS:
            inner = inner.replace(one, many, 1)
        length = [m.min_length for m in metadata if getattr(m, "min_length", None)]
        if origin is tuple and args and Ellipsis not in args:
            length = [len(args)]
        return f"a list of {f'{length[0]} ' if length else ''}{inner}"
    if origin is dict or _is_model(annotation):
        return "settings (name: value, ...), as conf/ writes them"
    words = {int: "a whole number", float: "a finite number", bool: "true or false", str: "text"}
    return words.get(annotation, "a name or a number") + _bounds(metadata)


PLURALS = (
    ("a whole number", "whole numbers"),
    ("a finite number", "numbers"),
    ("a number", "numbers"),
    ("a name or a number", "names or numbers"),
    ("text", "names"),
)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """The type under `Annotated[...]` (at any depth), and what the layers carry."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata += extra
    return annotation, metadata


def _base(annotation: Any) -> Any:
    return _unwrap(annotation)[0]


def _member(annotation: Any, value: Any) -> Any:
    """The part of `annotation` that `value` is checked against (a union's member by name)."""
    base, metadata = _unwrap(annotation)
    named = next((m for m in metadata if isinstance(m, NamedSettings)), None)
    if named is not None:
        return named.member(value) or annotation
    settings_of = next((m for m in metadata if isinstance(m, SettingsOf)), None)
    if settings_of is not None:
        return class_settings(settings_of.cls, settings_of.skip)
    if typing.get_origin(base) in (Union, types.UnionType):
        for candidate in typing.get_args(base):
            member = _member(candidate, value)
            if _is_model(member):
                return member
    return base if _is_model(base) else annotation


def _metadata(annotation: Any) -> list[Any]:
    """What `Annotated` carries, at any depth of Optional and Annotated."""
    return [
        m for part in (annotation, *typing.get_args(_base(annotation))) for m in _unwrap(part)[1]
    ]


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _walk(model: Any, values: Any, loc: tuple) -> tuple[list[str], Any, Any]:
    """The path of an error in the values (a union's tags and a validator's steps left out),
    the annotation of the setting there, and the model that holds it."""
    path: list[str] = []
    annotation, holder = model, None
    for part in loc:
        current = _member(annotation, values)
        fields = current.model_fields if _is_model(current) else {}
        if isinstance(values, dict) and part in values:
            holder, values = current, values[part]
            annotation = _field_annotation(fields[part]) if part in fields else _item(current)
            path.append(str(part))
        elif isinstance(values, list) and isinstance(part, int) and 0 <= part < len(values):
            args = typing.get_args(_base(annotation))
            annotation, values = (args[0] if args else Any), values[part]
            path[-1:] = [f"{path[-1] if path else ''}[{part}]"]
        elif isinstance(values, dict) and part in fields:  # a setting that is missing
            holder, values = current, None
            annotation = _field_annotation(fields[part])
            path.append(str(part))
    return path, annotation, holder


def _item(annotation: Any) -> Any:
    """What a mapping (`dict[str, X]`, or Optional of it) holds at its keys."""
    for candidate in (annotation, *typing.get_args(_base(annotation))):
        if typing.get_origin(_base(candidate)) is dict:
            return typing.get_args(_base(candidate))[1]
    return Any


def _field_annotation(field: Any) -> Any:
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def problems(where: str, model: Any, values: Any) -> list[str]:
    """Every problem of `values` against `model` (a pydantic model or an annotation), one line
    each: unknown keys (with the closest name), wrong types, values outside a range."""
    values = plain_container(values)
    try:
        TypeAdapter(model).validate_python(values)
        return []
    except ValidationError as error:
        details = error.errors(include_url=False)
    except Exception as error:  # noqa: BLE001 - any failure of the check is the value's
        return [f"{where}: {first_line(error)}"]
    found, seen = [], set()
    for detail in details:
        path, annotation, holder = _walk(model, values, tuple(detail["loc"]))
        name = ".".join(p for p in [where, *path] if p).replace(".[", "[")
        if name in seen:
            continue  # a union's members each report the same value
        seen.add(name)
        found.append(one_line(_line(name, detail, annotation, holder)))
    return found


def _line(name: str, detail: dict, annotation: Any, holder: Any) -> str:
    kind, value = detail["type"], detail.get("input")
    if kind == "missing":
        return f"{name}: missing; give it on the command line ({name}=...)"
    if kind == "extra_forbidden":
        known = list(getattr(holder, "model_fields", {})) if inspect.isclass(holder) else []
        close = difflib.get_close_matches(name.rpartition(".")[2], known, n=1)
        parent = name.rpartition(".")[0]
        hint = (
            f"did you mean {parent + '.' if parent else ''}{close[0]}?"
            if close
            else f"the settings are {', '.join(known) or '(none)'}"
        )
        return f"{name}: no such setting; {hint}"
    if kind == "union_tag_not_found" and isinstance(value, dict):
        named = next(m for m in _metadata(annotation) if isinstance(m, NamedSettings))
        given = " ".join(f"{name}.{k}={_shown(v)}" for k, v in value.items())
        return (
            f"{given} is set without a {named.kind}: choose one as well, e.g. "
            f"{name}={next(iter(named.table))} ({', '.join(named.table)})"
        )
    if kind == "union_tag_invalid":
        tags = detail.get("ctx", {}).get("expected_tags", "").replace("'", "")
        return f"{name}.name={_shown(_by_name(value))}: must be one of {tags}"
    if kind == "value_error":
        return f"{name}={_shown(value)}: {str(detail['msg']).removeprefix('Value error, ')}"
    return f"{name}={_shown(value)}: must be {describe(annotation)}"


def check(where: str, model: Any, values: Any) -> None:
    """`problems`, raised as one ConfigError (one line each)."""
    found = problems(where, model, values)
    if found:
        raise ConfigError("\n".join(found))


def import_problem(where: str, target: str, error: BaseException) -> str:
    """The line for a `_target_` whose class cannot be imported (Hydra's message, on one line)."""
    reason = " ".join(str(error).split())[:200]
    return f"{where}._target_={target}: cannot be imported ({reason})"


def settings_values(node: Any, objects: bool = True) -> dict[str, Any]:
    """A config node's values as a class's settings: Hydra's own keys (`_target_`, `_partial_`)
    and the objects Hydra builds from it are not settings (`objects`; in a file read back they
    are refused like any value that is not plain)."""
    values = plain_container(node) or {}
    if not objects:
        return values
    return {
        k: v
        for k, v in values.items()
        if k not in ("_target_", "_partial_") and not is_object_config(v)
    }


def class_problems(
    where: str, cls: type, node: Any, skip: tuple[str, ...] = (), objects: bool = True
) -> list[str]:
    """`problems` of a config node as the settings of `cls`'s constructor (`skip`: arguments
    checked on their own, or not settings). `objects=False` for a file read back: anything that
    is not a name or a number (a `_target_`, an interpolation) is refused at once."""
    values = settings_values(node, objects)
    if not isinstance(values, dict):
        return [f"{where}={_shown(values)}: must be {cls.__name__}'s settings"]
    values = {k: v for k, v in values.items() if k not in skip}
    if not objects:
        found = [
            one_line(f"{where}.{k}={_shown(v)}: must be plain names and numbers")
            for k, v in values.items()
            if not is_plain({str(k): v})
        ]
        if found:
            return found
    return problems(where, class_settings(cls, skip), values)


# --- the commands' own options --------------------------------------------------------------

Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]


class Options(BaseModel):
    model_config = STRICT


class TrainOptions(Options):
    """conf/train.yaml's own settings (each group is checked as its class's settings)."""

    seed: SEED = 42
    cpu_threads: Optional[Annotated[int, Field(ge=1, le=1024)]] = 1  # noqa: UP045
    lr_find: bool = False
    gradient_flow: bool = False
    test: bool = True
    optimized_metric: METRIC = "val/acc_best"
    resume: Optional[str] = None  # noqa: UP045
    ckpt_path: Optional[str] = None  # noqa: UP045


Node = dict[str, Any]


class ModelShape(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    net: Node


class TrainShape(BaseModel):
    """The train config's groups, as conf/ makes them: settings of a class, or parts by name."""

    model_config = ConfigDict(strict=True, extra="allow")
    data: Node
    augment: Optional[Node] = None  # noqa: UP045
    model: ModelShape
    optimizer: Node
    scheduler: Optional[Node] = None  # noqa: UP045
    trainer: Node
    callbacks: Optional[dict[str, Optional[Node]]] = None  # noqa: UP045
    logger: Optional[dict[str, Optional[Node]]] = None  # noqa: UP045


class EvaluateOptions(Options):
    ckpt_path: str
    split: Literal["test", "val"] = "test"
    data_dir: Optional[str] = None  # noqa: UP045
    accelerator: Accelerator = "auto"
    max_misclassified: Annotated[int, Field(ge=0, le=1_000)] = 36
    net_target: Optional[str] = None  # noqa: UP045


def _files(value: Any) -> Any:
    ok = (isinstance(value, str) and value) or (
        isinstance(value, list) and value and all(isinstance(x, str) and x for x in value)
    )
    if not ok:
        raise ValueError(
            "must be an image file or folder, or a list of them: inputs=[a.png,photos/]"
        )
    return value


class PredictOptions(Options):
    ckpt_path: str
    inputs: Annotated[Any, AfterValidator(_files)]
    output: Optional[str] = None  # noqa: UP045
    save_preprocessed: bool = False
    top_k: Annotated[int, Field(ge=1, le=10)] = 3
    net_target: Optional[str] = None  # noqa: UP045


class ExportOptions(Options):
    ckpt_path: str
    format: Literal["onnx", "torchscript"] = "onnx"
    output: Optional[str] = None  # noqa: UP045
    net_target: Optional[str] = None  # noqa: UP045


class ServeOptions(Options):
    ckpt_path: str
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1"
    port: Annotated[int, Field(ge=1_024, le=65_535)] = 8000  # LitServe's range
    max_batch_size: Annotated[int, Field(ge=1, le=1_024)] = 32
    batch_timeout: Annotated[float, Field(ge=0, le=10)] = 0.005
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    api_servers: Annotated[int, Field(ge=1, le=64)] = 1
    accelerator: Accelerator = "auto"
    max_upload_mb: Annotated[float, Field(gt=0, le=1_000)] = 10
    max_side: Annotated[int, Field(ge=28, le=65_536)] = 4096
    max_decode_mb: Annotated[float, Field(gt=0, le=1_000)] = 16
    refusal_delay: Annotated[float, Field(ge=0, le=10)] = 0.05
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"
    net_target: Optional[str] = None  # noqa: UP045


def command_options(model: type[Options], cfg: DictConfig, groups: Sequence[str] = ()) -> Any:
    """A command's options, checked against `model`, as an instance of it. `groups` are the
    config's other top-level nodes (checked as their own classes' settings)."""
    skip = ("hydra", "paths", "defaults", *groups)
    values = {}
    for key in cfg:
        if key in skip:
            continue
        if OmegaConf.is_missing(cfg, key):
            continue
        values[str(key)] = plain_container(cfg.get(key))
    check("", model, values)
    return model.model_validate(values)
