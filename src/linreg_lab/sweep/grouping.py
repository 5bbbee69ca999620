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
from linreg_lab.sweep import callback

PER_MODEL_KEYS = {
    "optimizer": {field.name for field in dataclasses.fields(SGDHyper)},
    "model": {"weight_std", "bias_init"},
    "tracking": {"run_name"},
    "sweep": {"trial"},  # each job's own Optuna trial
}


def group_jobs(
    configs: list[DictConfig], plains: list[dict | None] | None = None
) -> list[list[int]]:
    """Indices of configs, grouped in first-seen order: jobs whose configs are equal once the
    per-model settings are set aside, that the analytic engine trains; other jobs alone.

    plains: a list to fill with each config resolved (build.plain_config; None for a job that
    runs alone), for the group's runs: the jobs of a group are validated here.
    """
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    # The engine follows from the key (the optimizer's and model's type, trainer.engine): it is
    # checked once per key. Each job's own values were validated (its lr, momentum, ...).
    analytic: dict[str, bool] = {}
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
        # Validated when the sweep started (~25 ms a job, the vectorized launcher's one cost
        # over the basic one), unless a sweeper proposed it since (Optuna) or it was not sampled.
        if not callback.checked(cfg):
            validate(cfg)
        plain = build.plain_config(cfg)
    except Exception:  # an invalid job runs alone and reports its own error
        return None, None
    if (plain.get("dataset") or {}).get("stream") is True:  # no rows in memory to share
        return None, None
    if (plain.get("trainer") or {}).get("processes", 1) != 1:  # its own ranks: alone
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
