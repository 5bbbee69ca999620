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
