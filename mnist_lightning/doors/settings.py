"""The command-line door: every setting, typed once, in pydantic (strict).

- A class's settings are its constructor's parameters, as a pydantic model
  (`class_settings(cls)`), to check a whole config, or a checkpoint's settings, before anything
  is built. Their types and ranges are the constructor's annotations, or, where doors/ranges.py
  says more, its own: the project's classes take plain values (OWN_RANGES), and Lightning's and
  torch's get the ranges they leave to the fit (`library_ranges`).
- Networks, optimizers and schedulers are unions chosen by `name` (`NamedSettings`).

The door's other modules: doors/ranges.py (the tables), doors/problems.py (pydantic's errors as
one line per setting) and settings.py (each command's settings, typed with these).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union

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
    # (imported here: ranges.py builds its tables from this module's types)
    from mnist_lightning.doors.ranges import library_ranges

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
