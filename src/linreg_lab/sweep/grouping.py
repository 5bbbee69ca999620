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
    return _planned(cfg, {})[0]


def group_jobs(
    configs: list[DictConfig], plains: list[dict | None] | None = None
) -> list[list[int]]:
    """Indices of configs, grouped by pass_key in first-seen order; ungroupable jobs alone.

    plains: a list to fill with each config resolved (build.plain_config; None for a job that
    runs alone), for the group's runs: the jobs of a group are validated here.
    """
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    analytic: dict[str, bool] = {}  # the engine follows from the key: checked once per key
    for index, cfg in enumerate(configs):
        key, plain = _planned(cfg, analytic)
        if plains is not None:
            plains.append(plain if key is not None else None)
        if key is None:
            alone.append([index])
        else:
            groups.setdefault(key, []).append(index)
    return list(groups.values()) + alone


def _planned(cfg: DictConfig, analytic: dict[str, bool]) -> tuple[str | None, dict | None]:
    """(pass key or None, cfg resolved); analytic: what the engine check said for each key."""
    try:
        validate(cfg)
        plain = build.plain_config(cfg)
    except Exception:  # an invalid job runs alone and reports its own error
        return None, None
    shared = {
        group: {k: v for k, v in node.items() if k not in PER_MODEL_KEYS.get(group, ())}
        if isinstance(node, dict) else node
        for group, node in plain.items()
    }  # fmt: skip
    key = json.dumps(shared, sort_keys=True, default=str)
    if key not in analytic:
        try:
            analytic[key] = build.engine(cfg) == "analytic"
        except Exception:
            analytic[key] = False
    return (key if analytic[key] else None), plain
