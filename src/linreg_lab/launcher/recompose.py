"""A sweep job's config from a job composed before, when they differ only in plain values.

Hydra composes every job from scratch: it reads the defaults tree, loads and merges each config
file, then applies the command-line overrides (~0.1-0.2 s a job with this project's schemas).
Jobs of a learning-rate or batch-size sweep share everything up to that last step. For them,
a copy of an earlier job's config with the differing values applied the way Hydra applies them
is the config Hydra would compose (~10 ms). Anything else (a config group, `+key`, `~key`,
`key@package`, a dict or list value, a `hydra.` key, keys that nest in each other) is left to
Hydra's own composition.
"""

from __future__ import annotations

import copy

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf
from omegaconf.basecontainer import BaseContainer

_PLAIN = (bool, int, float, str)


def parse(overrides: list[str]) -> list[Override] | None:
    try:
        return OverridesParser.create().parse_overrides(overrides=overrides)
    except Exception:  # Hydra's composition reports the syntax error
        return None


def shape(parsed: list[Override]) -> tuple:
    """What two jobs must share for one to be recomposed from the other: all but the values."""
    return tuple((o.key_or_group, o.type, o.package) for o in parsed)


def _plain_value(override: Override) -> bool:
    if override.type != OverrideType.CHANGE or override.package is not None:
        return False
    if override.is_sweep_override() or override.is_hydra_override():
        return False
    value = override.value()
    return value is not None and isinstance(value, _PLAIN)


def _nested(key: str, keys: list[str]) -> bool:
    """key appears twice, or inside another key, or has another key inside it."""
    return sum(
        other == key or other.startswith(key + ".") or key.startswith(other + ".")
        for other in keys
    ) > 1  # fmt: skip


def recompose(
    template: DictConfig,
    template_overrides: list[Override],
    overrides: list[Override],
    repository,
    master_config: DictConfig,
) -> DictConfig | None:
    """Hydra's config for overrides, built from template (composed for template_overrides);
    None when the two differ in more than plain values of plain keys."""
    if shape(template_overrides) != shape(overrides):
        return None
    keys = [o.key_or_group for o in overrides]
    changed = []
    for before, after in zip(template_overrides, overrides):
        if before.input_line == after.input_line:
            continue
        key = after.key_or_group
        if not (_plain_value(before) and _plain_value(after)) or _nested(key, keys):
            return None
        if repository.group_exists(key):
            return None
        node = OmegaConf.select(
            template, key, throw_on_missing=False, throw_on_resolution_failure=False
        )
        if node is None or isinstance(node, BaseContainer):
            return None
        changed.append(after)
    cfg = copy.deepcopy(template)
    try:
        ConfigLoaderImpl._apply_overrides_to_config(changed, cfg)
    except Exception:  # Hydra's composition reports the same error, with its own wording
        return None
    task = [o for o in overrides if not o.is_hydra_override()]
    cfg.hydra.overrides.task = [o.input_line for o in task]
    dirname = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(
        overrides=task,
        kv_sep=dirname.kv_sep,
        item_sep=dirname.item_sep,
        exclude_keys=dirname.exclude_keys,
    )
    OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
    return cfg
