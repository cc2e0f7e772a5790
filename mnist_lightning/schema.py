"""What a run is, as types: the one description every setting is checked against.

- A class's settings are its constructor's parameters, typed by their annotations, ranges as
  `Annotated[int, whole(1)]` (`settings_schema`; no copy of any signature is kept here).
- A command's own options are the dataclasses below, each field's range beside it.
- A record read back from a file (`RunRecord`; a checkpoint's settings) holds only names and
  numbers, checked against these same types before anything is built.

`problems` says what is wrong, one line each. It runs after Hydra composes the config, so that a
bad value is one line in the project's words and one bad job of a sweep is a failed row.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lightning.errors import ConfigError

# --- plain data -----------------------------------------------------------------------------


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


# --- ranges ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A range: `ok(value)`, and what is allowed, in words."""

    ok: Callable[[Any], bool]
    allowed: str


def is_number(value: Any) -> bool:
    """An int or a float (not a bool, which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def whole(low: int, high: int | None = None, null: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        if v is None:
            return null
        is_int = isinstance(v, int) and not isinstance(v, bool)
        return is_int and v >= low and (high is None or v <= high)

    span = f"between {low:,} and {high:,}" if high is not None else f"at least {low}"
    return Rule(ok, f"a whole number {span}" + (", or null" if null else ""))


def number(
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    null: bool = False,
) -> Rule:
    def ok(v: Any) -> bool:
        if v is None:
            return null
        if not (is_number(v) and math.isfinite(v)):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    left = f"above {low:g}" if low_open else f"at least {low:g}"
    right = "" if high is None else f" and {'below' if high_open else 'at most'} {high:g}"
    return Rule(ok, f"a finite number {left}{right}" + (", or null" if null else ""))


def one_of(*choices: str, null: bool = False) -> Rule:
    allowed = f"one of {', '.join(choices)}" + (", or null" if null else "")
    return Rule(lambda v: v in choices or (null and v is None), allowed)


def either(*rules: Rule) -> Rule:
    return Rule(lambda v: any(r.ok(v) for r in rules), ", or ".join(r.allowed for r in rules))


def ranged(rule: Rule, default: Any = MISSING, **kwargs: Any) -> Any:
    """A dataclass field with its range beside it."""
    return field(default=default, metadata={"rule": rule}, **kwargs)


# --- types from constructors ----------------------------------------------------------------

_PLAIN_TYPES = (bool, int, float, str)


def _setting_type(annotation: Any) -> Any:
    """The OmegaConf type for a parameter's annotation: plain types stay; `X | None` is
    Optional; a union that allows a float (`float | Tensor`) is a float, one of ints and floats
    stays either (Any); sequences are lists; objects and callables are Any, whose values must
    still be plain data."""
    if annotation in _PLAIN_TYPES:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        plain = {a for a in rest if a in _PLAIN_TYPES}
        if plain == {float} or plain == {int}:
            inner = plain.pop()
        elif plain == {int, float} or len(plain) > 1:
            inner = Any
        elif len(rest) == 1:
            inner = _setting_type(rest[0])
        else:
            inner = Any
        return Optional[inner] if len(rest) < len(args) else inner  # noqa: UP045 - OmegaConf
    if origin in (list, tuple, collections.abc.Sequence):
        element = _setting_type(args[0]) if args else Any
        return list[element] if element in _PLAIN_TYPES else list[Any]
    if origin is typing.Literal and all(isinstance(a, str) for a in args):
        return str
    if origin in (dict, collections.abc.Mapping):
        return dict[str, Any]
    return Any


def _number_rule(annotation: Any) -> Rule | None:
    """`int | float` (the Trainer's limit_*_batches, gradient_clip_val) stays either type (Any)
    for OmegaConf, which then takes any value: this rule still asks for a number."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    args = set(typing.get_args(annotation))
    if args - {type(None)} != {int, float}:
        return None
    null = type(None) in args
    return Rule(
        lambda v: (null and v is None) or is_number(v), "a number" + (", or null" if null else "")
    )


def _default(parameter: inspect.Parameter) -> Any:
    default = parameter.default
    if default is inspect.Parameter.empty:
        return MISSING
    if isinstance(default, tuple):
        return list(default)
    return default if is_plain(default) else None


@functools.cache
def settings_schema(cls: type) -> tuple[type, bool]:
    """A dataclass of `cls`'s constructor parameters, and whether the
    constructor also takes any other keyword (**kwargs). A parameter annotated
    `Annotated[int, whole(1)]` carries its range."""
    signature = inspect.signature(cls)
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: untyped
        hints = {}
    fields, open_ended = [], False
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        annotation = hints.get(name, Any)
        rule = None
        if typing.get_origin(annotation) is typing.Annotated:  # Annotated[int, whole(1)]
            annotation, *extras = typing.get_args(annotation)
            rule = next((extra for extra in extras if isinstance(extra, Rule)), None)
        rule = rule or _number_rule(annotation)
        kind = _setting_type(annotation)
        default = _default(parameter)
        if default is None and kind is not Any and typing.get_origin(kind) is not typing.Union:
            kind = Optional[kind]  # noqa: UP045 - OmegaConf
        metadata = {"rule": rule} if rule else {}
        if isinstance(default, list):
            made = field(default_factory=lambda d=default: list(d), metadata=metadata)
        else:
            made = field(default=default, metadata=metadata)
        fields.append((name, kind, made))
    return dataclasses.make_dataclass(f"{cls.__name__}Settings", fields), open_ended


def _admits_plain(annotation: Any) -> bool:
    """Whether a value of this type may be a name or a number (or a list of them)."""
    if annotation in (*_PLAIN_TYPES, type(None), Any):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _admits_plain(args[0])
    if origin is typing.Literal:
        return any(a is None or isinstance(a, _PLAIN_TYPES) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_admits_plain(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return all(a is Ellipsis or _admits_plain(a) for a in args)
    return False


def takes_plain_value(cls: type, key: str) -> bool:
    """Whether `cls`'s constructor takes `key` as a name or a number (or a list of them): a
    setting that a value read back from a file may set."""
    parameter = inspect.signature(cls).parameters.get(key)
    if parameter is None or parameter.kind not in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        return False
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: not known
        return False
    return _admits_plain(hints.get(key, Any))


# --- checking -------------------------------------------------------------------------------

_DESCRIBED = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
    list[int]: "a list of whole numbers",
    list[float]: "a list of numbers",
    list[str]: "a list of names",
}


def describe_type(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Union:
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return (describe_type(inner[0]) if len(inner) == 1 else "a value") + ", or null"
    if typing.get_origin(kind) is list or kind is list:
        return _DESCRIBED.get(kind, "a list")
    return _DESCRIBED.get(kind, "a name or a number")


def _shown(value: Any) -> str:
    return str(plain_container(value))


def import_problem(where: str, target: str, error: BaseException) -> str:
    """The line for a `_target_` whose class cannot be imported (Hydra's message, on one line)."""
    reason = " ".join(str(error).split())[:200]
    return f"{where}._target_={target}: cannot be imported ({reason})"


def problems(
    where: str,
    schema: type,
    values: Mapping | DictConfig,
    open_ended: bool = False,
    skip: Callable[[str], bool] = lambda key: False,
) -> list[str]:
    """Every problem of `values` against the dataclass `schema`, one line each: unknown keys
    (with the closest name), wrong types, values outside a field's range, anything that is not
    plain data. `where` is the config path (`data`, `trainer`), `skip` keys checked elsewhere."""
    found = []
    kinds = {f.name: f for f in dataclasses.fields(schema)}
    types_ = typing.get_type_hints(schema)
    base = OmegaConf.structured(schema)
    known = {str(k): values.get(k) for k in values if str(k) in kinds and not skip(str(k))}
    try:  # all at once when they are all right (the usual case): one merge, not one per key
        typed_all = OmegaConf.merge(base, {k: plain_container(v) for k, v in known.items()})
    except (OmegaConfBaseException, ValueError, TypeError):
        typed_all = None
    prefix = f"{where}." if where else ""
    for key in values:
        key = str(key)
        if skip(key):
            continue
        value = values.get(key)
        name = f"{prefix}{key}"
        if key not in kinds:
            if open_ended and not key.startswith("_"):
                if not is_plain(value):
                    found.append(f"{name}={_shown(value)}: must be plain names and numbers")
                continue
            close = difflib.get_close_matches(key, list(kinds), n=1)
            hint = (
                f"did you mean {prefix}{close[0]}?"
                if close
                else f"the settings are {', '.join(kinds) or '(none)'}"
            )
            found.append(f"{name}: no such setting; {hint}")
            continue
        if not is_plain(value):
            found.append(f"{name}={_shown(value)}: must be plain names and numbers")
            continue
        merged = typed_all
        if merged is None:
            try:
                merged = OmegaConf.merge(base, {key: plain_container(value)})
            except OmegaConfBaseException:
                found.append(f"{name}={_shown(value)}: must be {describe_type(types_[key])}")
                continue
        rule = kinds[key].metadata.get("rule")
        if rule is not None and not rule.ok(plain_container(merged[key])):
            found.append(f"{name}={_shown(value)}: must be {rule.allowed}")
    return found


def class_problems(
    where: str,
    cls: type,
    values: Mapping | DictConfig,
    ignore: tuple[str, ...] = (),
    objects: bool = True,
) -> list[str]:
    """`problems` of `values` as the settings of `cls`'s constructor, the arguments in `ignore`
    (checked on their own) aside. `objects`: a composed config's Hydra keys (`_target_`,
    `_partial_`) and the objects Hydra builds from it are not settings; in a file read back
    (objects=False) they are refused like any value that is not plain."""
    schema, open_ended = settings_schema(cls)

    def skip(key: str) -> bool:
        if key in ignore:
            return True
        return objects and (key in ("_target_", "_partial_") or is_object_config(values.get(key)))

    return problems(where, schema, values, open_ended, skip=skip)


def check_rules(rules: Mapping[str, Rule], cfg: DictConfig) -> list[str]:
    """Ranges of settings no constructor checks (they would fail only later, in the fit)."""
    found = []
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=MISSING)
        if value is not MISSING and not rule.ok(plain_container(value)):
            found.append(f"{key}={_shown(value)}: must be {rule.allowed}")
    return found


# --- the commands' own options --------------------------------------------------------------

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


@dataclass
class TrainOptions:
    """conf/train.yaml's own settings (each group is checked as its class's settings)."""

    seed: int = ranged(whole(0), 42)
    cpu_threads: Optional[int] = ranged(whole(1, null=True), 1)  # noqa: UP045 - OmegaConf
    lr_find: bool = False
    gradient_flow: bool = False
    test: bool = True
    optimized_metric: str = "val/acc_best"
    resume: Optional[str] = None  # noqa: UP045 - OmegaConf
    ckpt_path: Optional[str] = None  # noqa: UP045 - OmegaConf


# Ranges of the train config that no constructor checks (the Trainer and the schedulers accept
# them, and the fit fails later, after the run's files are written).
TRAIN_RULES: dict[str, Rule] = {
    "optimizer.lr": number(0, low_open=True),
    # Lightning's meanings: null is 1,000 epochs unless max_steps or max_time bounds the run, -1
    # no limit (0 would train nothing).
    "trainer.max_epochs": either(
        whole(1, null=True), Rule(lambda v: v == -1 and type(v) is int, "-1 (no limit)")
    ),
    "trainer.log_every_n_steps": whole(0),
    "trainer.accumulate_grad_batches": whole(1),
    "trainer.val_check_interval": either(whole(1), number(0, 1, low_open=True, null=True)),
    "trainer.check_val_every_n_epoch": whole(1, null=True),
    "scheduler.interval": one_of("epoch", "step"),
    "scheduler.frequency": whole(1),
    "scheduler.step_size": whole(1),
    "scheduler.gamma": number(0, low_open=True),
    "scheduler.T_max": whole(1),
    "scheduler.eta_min": number(0),
    "scheduler.pct_start": number(0, 1, low_open=True, high_open=True),
    "scheduler.factor": number(0, 1, low_open=True, high_open=True),
    "scheduler.patience": whole(0),
    "callbacks.divergence_stop.divergence_threshold": number(0, low_open=True, null=True),
}


@dataclass
class EvaluateOptions:
    ckpt_path: str = MISSING
    split: str = ranged(one_of("test", "val"), "test")
    data_dir: Optional[str] = None  # noqa: UP045 - OmegaConf
    accelerator: str = ranged(one_of(*ACCELERATORS), "auto")
    max_misclassified: int = ranged(whole(0, 1_000), 36)
    net_target: Optional[str] = None  # noqa: UP045 - OmegaConf


FILES = Rule(
    lambda v: (
        (isinstance(v, str) and bool(v))
        or (isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v))
    ),
    "an image file or folder, or a list of them: inputs=[a.png,photos/]",
)


@dataclass
class PredictOptions:
    ckpt_path: str = MISSING
    inputs: Any = ranged(FILES)
    output: Optional[str] = None  # noqa: UP045 - OmegaConf
    save_preprocessed: bool = False
    top_k: int = ranged(whole(1, 10), 3)
    net_target: Optional[str] = None  # noqa: UP045 - OmegaConf


@dataclass
class ExportOptions:
    ckpt_path: str = MISSING
    format: str = ranged(one_of("onnx", "torchscript"), "onnx")
    output: Optional[str] = None  # noqa: UP045 - OmegaConf
    net_target: Optional[str] = None  # noqa: UP045 - OmegaConf


@dataclass
class ServeOptions:
    ckpt_path: str = MISSING
    host: str = ranged(one_of("127.0.0.1", "0.0.0.0", "::"), "127.0.0.1")
    port: int = ranged(whole(1_024, 65_535), 8000)  # LitServe's range
    max_batch_size: int = ranged(whole(1, 1_024), 32)
    batch_timeout: float = ranged(number(0, 10), 0.005)
    workers: int = ranged(whole(1, 64), 1)
    api_servers: int = ranged(whole(1, 64), 1)
    accelerator: str = ranged(one_of(*ACCELERATORS), "auto")
    max_upload_mb: float = ranged(number(0, 1_000, low_open=True), 10)
    max_side: int = ranged(whole(28, 65_536), 4096)
    max_decode_mb: float = ranged(number(0, 1_000, low_open=True), 16)
    refusal_delay: float = ranged(number(0, 10), 0.05)
    log_level: str = ranged(one_of("critical", "error", "warning", "info", "debug"), "warning")
    net_target: Optional[str] = None  # noqa: UP045 - OmegaConf


def command_options(schema: type, cfg: DictConfig, groups: tuple[str, ...] = ()) -> Any:
    """A command's options, checked against `schema`, as an instance of it. `groups` are the
    config's other top-level nodes (checked as their own classes' settings)."""
    skip = ("hydra", "paths", "defaults", *groups)
    missing = [f.name for f in dataclasses.fields(schema) if OmegaConf.is_missing(cfg, f.name)]
    found = [f"{name}: missing; give it on the command line ({name}=...)" for name in missing]
    found += problems("", schema, cfg, skip=lambda key: key in skip or key in missing)
    if found:
        raise ConfigError("\n".join(found))
    values = {f.name: plain_container(cfg.get(f.name)) for f in dataclasses.fields(schema)}
    return schema(**{k: v for k, v in values.items() if v is not None or k in cfg})


# --- the run's record -----------------------------------------------------------------------

RECORD_FORMAT = 2


@dataclass
class RunRecord:
    """run_config.yaml: what a run is, as names and numbers. `choices` are the option chosen per
    config group (`optimizer: adam`); `settings` every value of the run that is not a place (the
    data folder, the run folder, a tracker's address) or code; `typed_targets` the classes the
    user named on the command line (compared when resuming, never imported from here);
    `overrides` the command's own, for people to read."""

    format: int = RECORD_FORMAT
    choices: dict[str, Optional[str]] = field(default_factory=dict)  # noqa: UP045 - OmegaConf
    settings: dict[str, Any] = field(default_factory=dict)
    typed_targets: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
