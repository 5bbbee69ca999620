"""Compose each sweep job once, not twice, and most jobs from an earlier one.

PRIVATE HYDRA API, kept here only because it buys more than a fifth of a `make bench` figure
(the 16-run sweep: ~14.7 s without, ~10 s with, measured 2026-12-01); the tests in
tests/test_compose_once.py compare every recomposed config with Hydra's own composition and
fail loudly on a Hydra version where this no longer holds. It uses
hydra._internal.config_loader_impl (ConfigLoaderImpl._apply_overrides_to_config,
get_overrides_dirname) and wraps the config loader's load_sweep_config. Delete this module
and its calls (sweep/callback.py, the vectorized launcher's setup, bench/peer_sweep/noop.py) to
go back to Hydra's own composition.

Hydra's sweepers compose every job of a batch to validate it and discard the result; the
launcher then composes the same job again (~0.15 s a job). Wrapped here, the config loader
keeps each config it composed until the same overrides are asked for again, and hands it over
once. Validation only checks that composition succeeds, so the launcher receives exactly what it
would have composed.

A job that differs from one composed before only in plain values (a learning rate, a batch
size) is recomposed from it: a copy of that job's config with the differing values applied the
way Hydra applies them (~10 ms). Anything else (a config group, `+key`, `~key`, `key@package`, a
dict or list value, a `hydra.` key, keys that nest in each other) is left to Hydra's own
composition.
"""

from __future__ import annotations

import copy

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf
from omegaconf.basecontainer import BaseContainer

_PLAIN = (bool, int, float, str)

# More than a batch of jobs: the configs of the batch being validated all stay until launched.
_MAX_KEPT = 4096
# Override shapes (keys and kinds, not values) with a composed config to recompose from.
_MAX_TEMPLATES = 64


def compose_each_job_once(config_loader) -> None:
    """Wrap config_loader.load_sweep_config (idempotent)."""
    if isinstance(config_loader.load_sweep_config, _ComposeOnce):
        return
    config_loader.load_sweep_config = _ComposeOnce(config_loader)


class _ComposeOnce:
    """config_loader.load_sweep_config, composing each job once and most from an earlier one.

    Configs are keyed by the master config's id and kept with the master itself: an id alone
    could be a later master's, once the first is gone. Pickled (a launcher that sends the
    config loader to its workers), it leaves its configs behind: no worker asks for them.
    """

    def __init__(self, config_loader) -> None:
        self._loader = config_loader
        self._compose = config_loader.load_sweep_config
        self._kept: dict[tuple, tuple[DictConfig, DictConfig]] = {}
        self._templates: dict[tuple, tuple[DictConfig, list, DictConfig]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_kept": {}, "_templates": {}}

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        master, config = self._kept.pop(key, (None, None))
        if master is master_config:
            return config
        config = self._compose_or_recompose(master_config, sweep_overrides)
        # A copy (~6 ms), not the object itself: a batch can hold the same overrides twice (a
        # repeated value, a sampler drawing one point again), and then two jobs would run on
        # one config object.
        self._kept[key] = (master_config, copy.deepcopy(config))
        if len(self._kept) > _MAX_KEPT:  # a sweeper that does not validate (Optuna)
            del self._kept[next(iter(self._kept))]
        return config

    def _compose_or_recompose(self, master_config: DictConfig, sweep_overrides: list[str]):
        hydra_overrides = OmegaConf.to_container(master_config.hydra.overrides.hydra)
        parsed = parse([*hydra_overrides, *sweep_overrides])
        if parsed is None:
            return self._compose(master_config, sweep_overrides)
        key = (id(master_config), shape(parsed))
        master, template_overrides, template = self._templates.get(key, (None, None, None))
        if master is master_config:
            config = recompose(
                template, template_overrides, parsed, self._loader.repository, master_config
            )
            if config is not None:
                return config
        config = self._compose(master_config, sweep_overrides)
        # The latest full composition of a shape: a grid over a config group and a value
        # composes each group's first job, then recomposes the rest from it.
        if len(self._templates) < _MAX_TEMPLATES or key in self._templates:
            self._templates[key] = (master_config, parsed, copy.deepcopy(config))
        return config


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
