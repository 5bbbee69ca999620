"""Real data: a CSV or Parquet table, or scikit-learn's bundled diabetes table, as RegressionData.

Rows are split train / validation / test by a seeded permutation; every statistic (the
standardization's means and scales, the least-squares reference) comes from the training rows
only. Columns that are not numeric are refused by name (no silent encoding).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from linreg_lab.data import (
    DataError,
    RegressionData,
    Scaling,
    Split,
    TableSource,
    split_fractions,
    split_rows,
)

MISSING_CHOICES = ("error", "drop")
log = logging.getLogger(__name__)


TableError = DataError  # a table that cannot be trained on; str() is the one line shown


def load_table(
    path: str,
    target: str,
    features: list[str] | None = None,
    missing: str = "error",
    split: dict | None = None,
    standardize: bool = True,
    standardize_target: bool = False,
) -> RegressionData:
    """The table at path (CSV or Parquet, relative to the working directory or absolute)."""
    file = _existing_file(path)
    frame = _read(file)
    source = TableSource(
        name=file.stem, path=str(file), digest=_file_digest(file), kind=_kind(file)
    )
    return from_frame(
        frame, target, features, missing, split, standardize, standardize_target, source
    )


def load_diabetes(
    split: dict | None = None, standardize: bool = True, standardize_target: bool = False
) -> RegressionData:
    """scikit-learn's diabetes table (442 x 10), read from files inside its wheel: no network."""
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    frame = sklearn_diabetes(as_frame=True, scaled=False).frame
    source = TableSource(
        name="diabetes", path="sklearn.datasets.load_diabetes", digest="sklearn", kind="sklearn"
    )
    return from_frame(
        frame, "target", None, "error", split, standardize, standardize_target, source
    )


def from_frame(
    frame,
    target: str,
    features: list[str] | None,
    missing: str,
    split: dict | None,
    standardize: bool,
    standardize_target: bool,
    source: TableSource,
) -> RegressionData:
    """RegressionData from a pandas DataFrame: chosen columns, missing rows, split, scaling."""
    import pandas as pd

    where = f"dataset.path={source.path}"
    target = str(target)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise TableError(f"{where}: the table is empty")
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if target not in columns:
        raise TableError(
            f"dataset.target={target} is not allowed: no such column; the table has "
            f"{', '.join(columns[:30])}{' ...' if len(columns) > 30 else ''}"
        )
    nested = [c for c in columns if frame[c].dtype == object and _nested(frame[c])]
    if nested:
        raise TableError(f"{where}: nested columns cannot be features or the target: {nested}")
    if features is None:
        chosen = [c for c in columns if c != target and pd.api.types.is_numeric_dtype(frame[c])]
        if not chosen:
            raise TableError(f"{where}: no numeric column besides the target {target!r}")
    else:
        chosen = [str(f) for f in features]
        unknown = [f for f in chosen if f not in columns]
        if unknown:
            raise TableError(
                f"dataset.features={unknown} is not allowed: no such column; the table has "
                f"{', '.join(columns[:30])}"
            )
        if target in chosen:
            raise TableError(f"dataset.features: the target {target!r} cannot be a feature")
    text = [c for c in [*chosen, target] if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise TableError(
            f"{where}: columns {text} are not numeric (linreg-lab does not encode categories: "
            "drop them with dataset.features=[...] or encode them in the file)"
        )
    values = frame[[*chosen, target]].to_numpy(dtype=np.float64, copy=False)
    bad = ~np.isfinite(values).all(axis=1)
    dropped = int(bad.sum())
    if dropped:
        if missing == "error":
            raise TableError(
                f"{where}: {dropped} of {len(values)} rows have NaN, inf or empty values; "
                "set dataset.missing=drop to train without them"
            )
        values = values[~bad]
        log.warning(
            "dataset: dropped %d of %d rows with NaN, inf or empty values", dropped, len(bad)
        )
    if len(values) == 0:
        raise TableError(f"{where}: every row has a missing value ({dropped} dropped)")
    fractions = split_fractions(split)
    n, d = values.shape[0], len(chosen)
    train, val, test = split_rows(n, fractions)
    if len(train) <= d:
        raise TableError(
            f"dataset.split: {len(train)} training rows for {d} features; least squares needs "
            "more rows than features (lower dataset.split.val or dataset.split.test)"
        )
    X = values[:, :d]
    y = values[:, d:]
    scaling = _scaling(X[train], y[train], standardize, standardize_target, chosen)
    X = (X - scaling.x_mean) / scaling.x_scale
    y = (y - scaling.y_mean) / scaling.y_scale

    def part(rows):
        return (
            torch.from_numpy(np.ascontiguousarray(X[rows], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(y[rows], dtype=np.float32)),
        )

    X_train, y_train = part(train)
    splits = Split(*part(val), *part(test), fractions.val, fractions.test, fractions.seed)
    return RegressionData(
        X_train, y_train, true_w=None, true_b=None, noise_std=None, seed=fractions.seed,
        feature_names=tuple(chosen), split=splits, scaling=scaling, source=source,
        dropped_rows=dropped,
    )  # fmt: skip


def _existing_file(path: str) -> Path:
    if not path or path == "???":
        raise TableError("dataset.path is not set: give a CSV or Parquet file")
    file = Path(os.path.expanduser(str(path)))
    file = file if file.is_absolute() else Path.cwd() / file
    if not file.exists():
        raise TableError(f"dataset.path={path} is not allowed: no such file ({file})")
    if file.is_dir():
        raise TableError(f"dataset.path={path} is not allowed: a directory, not a file")
    if _kind(file) is None:
        raise TableError(
            f"dataset.path={path} is not allowed: a .csv, .csv.gz, .tsv or .parquet file"
        )
    if file.stat().st_size == 0:
        raise TableError(f"dataset.path={path}: the file is empty")
    return file.resolve()


def _kind(file: Path) -> str | None:
    name = file.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "csv"
    return None


def _read(file: Path):
    import pandas as pd

    where = f"dataset.path={file}"
    try:
        if _kind(file) == "parquet":
            return pd.read_parquet(file)
        sep = "\t" if file.name.lower().endswith(".tsv") else ","
        return pd.read_csv(file, sep=sep)
    except (ValueError, OSError, ImportError, pd.errors.ParserError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TableError(f"{where}: cannot read it as {_kind(file)}: {first}") from None
    except Exception as error:  # pyarrow's own errors: a file that is not Parquet
        raise TableError(f"{where}: cannot read it as {_kind(file)}: {error}") from None


def _nested(column) -> bool:
    sample = column.dropna().head(100)
    return any(isinstance(v, list | dict | tuple | np.ndarray) for v in sample)


def _file_digest(file: Path) -> str:
    """8 hex digits naming the file's version: its path, size and modification time."""
    stat = file.stat()
    key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _scaling(X, y, standardize: bool, standardize_target: bool, names) -> Scaling:
    d = X.shape[1]
    x_mean, x_scale = np.zeros(d), np.ones(d)
    if standardize:
        x_mean, x_scale = X.mean(axis=0), X.std(axis=0)
        constant = [names[j] for j in range(d) if not x_scale[j] > 0]
        if constant:
            raise TableError(
                f"dataset.standardize=true is not allowed: {constant} are constant on the "
                "training rows (drop them with dataset.features=[...])"
            )
    y_mean, y_scale = 0.0, 1.0
    if standardize_target:
        y_mean, y_scale = float(y.mean()), float(y.std())
        if not y_scale > 0:
            raise TableError("dataset.standardize_target=true: the target is constant")
    return Scaling(x_mean, x_scale, y_mean, y_scale)
