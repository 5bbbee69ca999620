"""Check every value a sweep will try before its parent run exists.

Each swept value is composed onto the sweep's fixed overrides and validated alone: the cost
grows with the number of values, not with the size of the grid.
"""

from __future__ import annotations

import copy

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from linreg_lab.config.validate import ConfigError, validate


def swept_overrides(config: DictConfig) -> tuple[list[str], list[str]]:
    """(fixed overrides, one 'key=value' per swept value) from the command line and the preset."""
    arguments = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + arguments
    fixed: dict[str, str] = {}
    swept: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override() and override.is_discrete_sweep():
            swept[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            fixed.pop(key, None)
        elif not override.is_sweep_override():
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
            swept.pop(key, None)
    return list(fixed.values()), [value for values in swept.values() for value in values]


def check_sweep(config: DictConfig) -> None:
    """Raise ConfigError for the first swept value that cannot run.

    Hydra composes once; a swept key then only updates a copy (its schema still checks the
    type), except a config group, which needs a new composition.
    """
    fixed, swept = swept_overrides(config)
    config_name = OmegaConf.select(config, "hydra.job.config_name", default="config")
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    base = _compose(config_name, fixed)
    validate(base)
    parser = OverridesParser.create()
    for override in swept:
        parsed = parser.parse_override(override)
        key = parsed.get_key_element()
        if key in groups or parsed.is_add() or parsed.is_delete() or key.startswith("hydra"):
            job = _compose(config_name, [*fixed, override])
        else:
            job = copy.deepcopy(base)
            try:
                OmegaConf.update(job, key, parsed.value(), merge=True)
            except Exception as error:  # the schema refuses the value's type
                raise ConfigError(f"{override}: {one_line(error)}") from None
        validate(job)


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name, overrides=overrides)
    except Exception as error:  # Hydra's composition errors: wrong type, unknown key
        raise ConfigError(one_line(error)) from None


def one_line(error: BaseException) -> str:
    """Hydra's multi-line composition error (and its cause) as one line."""
    text = f"{error}\n{error.__cause__ or ''}".split("Config search path")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type="))]
    return " ".join(dict.fromkeys(lines))
