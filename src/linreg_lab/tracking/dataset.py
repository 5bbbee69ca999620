"""A run's inputs and outputs in MLflow's terms: the dataset it trained on, the model it made.

Runs on the same data share a dataset name and digest in the UI. The data is synthetic, so the
generator's parameters identify it exactly: the digest hashes them, never X (maybe gigabytes).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

CONTEXT = "training"
# Beyond this many weights the UI shows num_features instead of the whole true_w list.
_LISTED_WEIGHTS = 20


@dataclass(frozen=True)
class DataFacts:
    """What the dataset entry says about the data, without the data (for the MLflow helper)."""

    num_samples: int
    num_features: int
    true_b: float | None
    noise_std: float | None
    seed: int
    dtype: str  # numpy's name: "float32"
    features_nbytes: int
    # A table's: its source (name, path, digest, kind), columns, and rows per split.
    source: tuple[str, str, str, str] | None = None
    feature_names: tuple[str, ...] | None = None
    held_out: tuple[int, int] = (0, 0)  # validation rows, test rows

    @classmethod
    def of(cls, data) -> DataFacts:
        """From a RegressionData (or a streamed.StreamedTable: float32 rows it never holds)."""
        source, split = data.source, data.split
        if data.streamed:
            dtype, nbytes, held_out = "float32", data.features_nbytes, data.held_out_rows
        else:
            dtype, nbytes = str(data.X.dtype).removeprefix("torch."), data.X.element_size() * (
                data.X.nelement())  # fmt: skip
            held_out = (split.X_val.shape[0], split.X_test.shape[0]) if split else (0, 0)
        return cls(
            data.num_samples, data.num_features, data.true_b, data.noise_std, data.seed,
            dtype, nbytes,
            (source.name, source.path, source.digest, source.kind) if source else None,
            data.feature_names, held_out,
        )  # fmt: skip


def generator_params(spec: Mapping[str, object], data) -> dict[str, object]:
    """What regenerates the data: the dataset config (its _target_ as 'generator'), canonical.

    true_w is kept when it was used as given; when num_features drew a seeded random true_w
    instead, num_features is what identifies the data (see linreg_lab.data.resolve_true_w).
    """
    params = {k: v for k, v in spec.items() if not str(k).startswith("_") and v is not None}
    params["generator"] = str(spec.get("_target_", "linreg_lab.data.make_synthetic_regression"))
    given_w = spec.get("true_w")
    drawn = given_w is None or len(given_w) != data.num_features
    if drawn:
        params.pop("true_w", None)
        params["num_features"] = data.num_features
    else:
        params.pop("num_features", None)
        params["true_w"] = [float(v) for v in given_w]
    params.update(
        true_b=data.true_b, noise_std=data.noise_std, num_samples=data.num_samples, seed=data.seed
    )
    return dict(sorted(params.items()))


def digest(params: Mapping[str, object]) -> str:
    """8 hex digits of SHA-256 over the canonical JSON of the generator's parameters."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def dataset_input(spec: Mapping[str, object], data: DataFacts):
    """An mlflow.entities.DatasetInput for the run: name, digest, source, schema and profile."""
    import numpy as np
    from mlflow.data import from_numpy
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not isinstance(data, DataFacts):
        data = DataFacts.of(data)
    params = generator_params(spec, data)
    n, d = data.num_samples, data.num_features
    shown = dict(params)
    if "true_w" in shown and len(shown["true_w"]) > _LISTED_WEIGHTS:
        shown["true_w"] = f"{len(shown['true_w'])} values (see the run's parameters.json)"
    dtype = np.dtype(data.dtype)
    # MLflow's own NumPy dataset, on empty arrays of the data's shape: its name, schema and
    # source as MLflow writes them, without sending the data to this process.
    entry = from_numpy(
        np.empty((0, d), dtype), targets=np.empty((0, 1), dtype),
        source=CodeDatasetSource(tags=shown), name=f"synthetic-D{d}-N{n}", digest=digest(params),
    ).to_dict()  # fmt: skip
    entry["profile"] = json.dumps({
        "num_rows": n,
        "features_shape": [n, d],
        "targets_shape": [n, 1],
        "features_nbytes": data.features_nbytes,
    })  # fmt: skip
    dataset = Dataset(**entry)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", CONTEXT)])


def table_inputs(spec: Mapping[str, object], data: DataFacts) -> list:
    """A table's splits as MLflow pandas datasets, one per split (context training,
    validation, test): the file's name, path and version, the split's rows and schema."""
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.entities import Dataset, DatasetInput, InputTag

    name, path, version, kind = data.source
    target = str(spec.get("target", "target"))
    columns = {c: pd.Series(dtype="float32") for c in (*(data.feature_names or ()), target)}
    split = spec.get("split") or {}
    rows = {"training": data.num_samples, "validation": data.held_out[0], "test": data.held_out[1]}
    inputs = []
    for context, count in rows.items():
        if count == 0:
            continue
        key = {"file": version, "split": split, "part": context, "spec": dict(spec)}
        entry = from_pandas(
            pd.DataFrame(columns), source=path, targets=target, name=name, digest=digest(key)
        ).to_dict()  # MLflow's own pandas dataset, on an empty frame of the table's columns
        entry["profile"] = json.dumps({"num_rows": count, "num_elements": count * len(columns)})
        inputs.append(DatasetInput(Dataset(**entry), [InputTag("mlflow.data.context", context)]))
    return inputs


def log_dataset(client, run_id: str, spec: Mapping[str, object], data: DataFacts) -> str:
    """Record the training data (and a table's held-out splits) as the run's dataset inputs;
    returns the training data's digest."""
    entries = table_inputs(spec, data) if data.source else [dataset_input(spec, data)]
    entry = entries[0]
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=entries)
            break
        except Exception:
            # Parallel jobs on one store race to insert the same dataset row; the loser's
            # retry finds the row and links to it. Any other error fails again.
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    return entry.dataset.digest
