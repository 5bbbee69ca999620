"""Config -> MLflow params and run names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists stay whole values."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def run_name_from_overrides(overrides: Sequence[str]) -> str:
    """'optimizer.lr=0.1 trainer.batch_size=32' -> 'lr=0.1 batch_size=32'; none -> 'default'."""
    parts = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts) or "default"


TAG_JOB_KEY = "linreg.job_key"


TAG_DATA_KEY = "linreg.data_key"
# The settings that only draw another replicate of a configuration (a sweep averages them).
SEED_KEYS = ("trainer.seed", "dataset.seed", "dataset.split.seed")


# How a table is read, not what it holds: left out of the data key.
_READING_KEYS = ("stream", "memory_budget_gb", "shuffle_window")


def data_key(config: Mapping, streamed: bool = False) -> str:
    """What makes two runs' data the same (a registered model's comparisons): the config's
    dataset alone, a table's content included, hashed; unlike the job key, not linreg-lab's
    version (an upgrade does not make the same data other data). How a table is read is left
    out, but whether it was streamed is in: a streamed table splits its rows another way
    (streamed.parts_of), so its validation rows are others."""
    dataset = config.get("dataset")
    if isinstance(dataset, Mapping):
        dataset = {k: v for k, v in dataset.items() if k not in _READING_KEYS}
        if streamed:
            dataset["streamed"] = True
    return _digest(_with_content(dataset))


def configuration_key(config: Mapping) -> str:
    """What makes two runs replicates of one configuration (a sweep averages them): the job
    key of the config with its seeds (SEED_KEYS) left out."""
    import copy

    kept = copy.deepcopy(dict(config))
    for key in SEED_KEYS:
        *parents, name = key.split(".")
        node = kept
        for parent in parents:  # dataset.split.seed: down to its node, if the config has it
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return job_key(kept)


def job_key(config: Mapping) -> str:
    """What makes two runs the same job, for a re-run sweep to skip a finished one: the whole
    resolved config but sweep.* and tracking.* (where it is recorded; the experiment is where a
    re-run looks), a table's path made absolute and its content's digest, and linreg-lab's
    version, hashed."""
    from linreg_lab import __version__

    kept = {k: v for k, v in config.items() if k not in ("sweep", "tracking")}
    if "dataset" in kept:
        kept["dataset"] = _with_content(kept["dataset"])
    return _digest([kept, __version__])


def _with_content(dataset):
    """A dataset config with a table's path made absolute and its content's digest beside it:
    a changed file is other data (data.content_digest), a rewritten identical one is not."""
    import os

    from linreg_lab.data import content_digest

    if isinstance(dataset, Mapping) and isinstance(dataset.get("path"), str):
        path = os.path.abspath(os.path.expanduser(dataset["path"]))
        return {**dataset, "path": path, "content": content_digest(path)}
    return dataset


def _digest(value) -> str:
    import hashlib
    import json

    canonical = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
