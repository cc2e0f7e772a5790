"""The search space, from the sweep syntax Hydra users already type: `choice(a, b)`,
`range(1, 5)`, `interval(0.01, 0.1)` and `tag(log, interval(1e-4, 0.5))` become Optuna's
distributions; every other override is passed to each trial as it was written."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mnist_lightning.config import hydra_quoted
from mnist_lightning.errors import ConfigError, first_line


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions by setting name, and the fixed overrides. A later override of a key
    (the command line's, after `hydra.sweeper.params`) replaces an earlier one."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # noqa: BLE001 - Hydra's parse errors, said in one line
        raise ConfigError(f"the search space cannot be read: {first_line(error)}") from None
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = distribution(override)
        else:
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
    return distributions, list(fixed.values())


def distribution(override: Override) -> BaseDistribution:
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():  # Hydra's range stops before `stop`; Optuna's high is in it
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}: {override.get_value_element_as_str()} is empty")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(min(values), max(values), step=abs(int(value.step)))
        return FloatDistribution(min(values), max(values), step=abs(float(value.step)))
    # interval(low, high), tag(log, interval(...)): integers only where both ends are
    log = "log" in value.tags
    try:
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    except ValueError as error:  # low above high, a log scale from 0
        raise ConfigError(f"{key}: {first_line(error)}") from None


def as_override(name: str, value: Any) -> str:
    """`name=value` for one sampled value, written so that Hydra reads back the same value: a
    string as it is where Hydra reads it so (`relu`), quoted where it would not (`'1'`)."""
    if isinstance(value, str):
        plain = f"{name}={value}"
        try:
            if OverridesParser.create().parse_override(plain).value() == value:
                return plain
        except Exception:  # noqa: BLE001 - Hydra cannot read it bare: quoted below
            pass
        return f"{name}={hydra_quoted(value)}"
    if value is None:
        return f"{name}=null"
    return f"{name}={str(value).lower() if isinstance(value, bool) else value}"
