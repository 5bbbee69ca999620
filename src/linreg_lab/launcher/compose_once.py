"""Compose each sweep job once, not twice, and most jobs from an earlier one.

Hydra's sweepers compose every job of a batch to validate it and discard the result; the
launcher then composes the same job again (~0.15 s a job with this project's schemas, a third
of a short job's cost). Wrapped here, the config loader keeps each config it composed until the
same overrides are asked for again, and hands it over once. Validation only checks that
composition succeeds, so the launcher receives exactly what it would have composed.

A job that differs from one composed before only in plain values (a learning rate, a batch
size) is recomposed from it (see recompose.py): ~10 ms instead of a full composition.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from linreg_lab.launcher import recompose

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
        parsed = recompose.parse([*hydra_overrides, *sweep_overrides])
        if parsed is None:
            return self._compose(master_config, sweep_overrides)
        shape = (id(master_config), recompose.shape(parsed))
        master, template_overrides, template = self._templates.get(shape, (None, None, None))
        if master is master_config:
            config = recompose.recompose(
                template, template_overrides, parsed, self._loader.repository, master_config
            )
            if config is not None:
                return config
        config = self._compose(master_config, sweep_overrides)
        # The latest full composition of a shape: a grid over a config group and a value
        # composes each group's first job, then recomposes the rest from it.
        if len(self._templates) < _MAX_TEMPLATES or shape in self._templates:
            self._templates[shape] = (master_config, parsed, copy.deepcopy(config))
        return config
