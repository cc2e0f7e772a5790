"""The command-line door's one line per setting: `problems` turns pydantic's errors into the
project's lines: the config path, the value, what is allowed, and "did you mean" for a name that
is no setting. The types themselves are in doors/settings.py.
"""

from __future__ import annotations

import difflib
import inspect
import json
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import BaseModel, TypeAdapter, ValidationError

from mnist_lightning.doors.settings import (
    MAX_WHOLE,
    NamedSettings,
    SettingsOf,
    admits_plain,
    chosen_name,
    class_settings,
    is_object_config,
    is_plain,
    plain_container,
)
from mnist_lightning.errors import ConfigError, first_line, one_line


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
        found.append((name, one_line(_line(name, detail, annotation, holder))))
    # A union's list member reports each item; the setting as a whole says it once.
    return [line for name, line in found if name.rpartition("[")[0] not in seen]


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
        return f"{name}.name={_shown(chosen_name(value))}: must be one of {tags}"
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


HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_")  # how Hydra builds a node


def settings_values(node: Any, objects: bool = True) -> dict[str, Any]:
    """A config node's values as a class's settings: Hydra's own keys (`_target_`, `_partial_`)
    and the objects Hydra builds from it are not settings (`objects`; in a file read back they
    are refused like any value that is not plain)."""
    values = plain_container(node) or {}
    if not objects:
        return values
    return {k: v for k, v in values.items() if k not in HYDRA_KEYS and not is_object_config(v)}


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
