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


def data_key(config: Mapping) -> str:
    """What makes two runs' data the same (a registered model's comparisons): the config's
    dataset alone, a table's content included, hashed; unlike the job key, not linreg-lab's
    version (an upgrade does not make the same data other data)."""
    import hashlib
    import json
    import os

    from linreg_lab.data import content_digest

    dataset = config.get("dataset")
    if isinstance(dataset, Mapping) and isinstance(dataset.get("path"), str):
        path = os.path.abspath(os.path.expanduser(dataset["path"]))
        dataset = {**dataset, "path": path, "content": content_digest(path)}
    canonical = json.dumps(dataset, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def configuration_key(config: Mapping) -> str:
    """What makes two runs replicates of one configuration (a sweep averages them): the job
    key of the config with its seeds (SEED_KEYS) left out."""
    kept = {section: dict(values) if isinstance(values, Mapping) else values
            for section, values in config.items()}  # fmt: skip
    for key in SEED_KEYS:
        section, _, rest = key.partition(".")
        node = kept.get(section)
        path = rest.split(".")
        for name in path[:-1]:  # dataset.split.seed: a copy of each level it passes
            if isinstance(node, Mapping) and isinstance(node.get(name), Mapping):
                node[name] = dict(node[name])
                node = node[name]
            else:
                node = None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return job_key(kept)


def job_key(config: Mapping) -> str:
    """What makes two runs the same job, for a re-run sweep to skip a finished one: the whole
    resolved config but sweep.* and tracking.* (where it is recorded; the experiment is where a
    re-run looks), a table's path made absolute and its content's digest, and linreg-lab's
    version, hashed."""
    import hashlib
    import json
    import os

    from linreg_lab import __version__
    from linreg_lab.data import content_digest

    kept = {k: v for k, v in config.items() if k not in ("sweep", "tracking")}
    dataset = kept.get("dataset")
    if isinstance(dataset, Mapping) and isinstance(dataset.get("path"), str):
        path = os.path.abspath(os.path.expanduser(dataset["path"]))
        # The data's bytes too: a re-run on a changed file trains again (data.content_digest)
        kept["dataset"] = {**dataset, "path": path, "content": content_digest(path)}
    canonical = json.dumps([kept, __version__], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
