"""Which jobs of a sweep can train together: the same run once per-model settings are removed.

What may differ inside a group follows from the vectorized engine: the fields of SGDHyper
(one value per model column), the model's initialisation, and the run's name. Everything else
(data, batch size, epochs, seed and so batch order, device, engine choice) must be equal.
"""

from __future__ import annotations

import dataclasses
import json

from omegaconf import DictConfig

from linreg_lab import build
from linreg_lab.config.validate import validate
from linreg_lab.engines.analytic import SGDHyper

PER_MODEL_KEYS = {
    "optimizer": {field.name for field in dataclasses.fields(SGDHyper)},
    "model": {"weight_std", "bias_init"},
    "tracking": {"run_name"},
}


def shares_a_pass(cfg: DictConfig) -> bool:
    """True when cfg trains a linear model with SGD: the analytic engine's domain."""
    try:
        validate(cfg)
        return build.engine(cfg) == "analytic"
    except Exception:  # an invalid job runs alone and reports its own error
        return False


def pass_key(cfg: DictConfig) -> str | None:
    """Equal keys train together; None: the job runs alone."""
    if not shares_a_pass(cfg):
        return None
    config = build.plain_config(cfg)
    for group, keys in PER_MODEL_KEYS.items():
        for key in keys:
            config.get(group, {}).pop(key, None)
    return json.dumps(config, sort_keys=True, default=str)


def group_jobs(configs: list[DictConfig]) -> list[list[int]]:
    """Indices of configs, grouped by pass_key in first-seen order; ungroupable jobs alone."""
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for index, cfg in enumerate(configs):
        key = pass_key(cfg)
        if key is None:
            alone.append([index])
        else:
            groups.setdefault(key, []).append(index)
    return list(groups.values()) + alone
