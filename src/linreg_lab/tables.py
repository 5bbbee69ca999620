"""Real data: a CSV or Parquet table, or scikit-learn's bundled diabetes table, as RegressionData.

Rows are split train / validation / test by a seeded permutation; every statistic (the
standardization's means and scales, the least-squares reference) comes from the training rows
only. Columns that are not numeric are refused by name (no silent encoding).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from linreg_lab.data import (
    DataError,
    RegressionData,
    Scaling,
    Split,
    TableSource,
    content_digest,
    split_fractions,
    split_rows,
    standardization,
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
    stream: bool | str = "auto",
    memory_budget_gb: float | None = None,
    shuffle_window: int = 500_000,
):
    """The table at path (CSV or Parquet, relative to the working directory or absolute), or a
    folder of Parquet files (one table: their rows in the order of their paths, sorted).

    A Parquet table is streamed (streamed.StreamedTable: read in passes, never whole) when
    stream is true, or "auto" and its rows as float32 would take more than memory_budget_gb
    (null: half of what this process may use, shared by its job's tasks on this machine:
    streamed.memory_budget; in a world of ranks, the least of theirs); else it is loaded
    (RegressionData)."""
    from linreg_lab import streamed

    if not (stream is True or stream is False or stream == "auto"):
        raise TableError(f"dataset.stream={stream} is not allowed: true, false or auto")
    if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or (
            shuffle_window < 1):  # fmt: skip
        raise TableError(
            f"dataset.shuffle_window={shuffle_window} is not allowed: a whole number of rows >= 1"
        )
    file = _existing_file(path)
    kind = "parquet" if file.is_dir() else _kind(file)
    if stream is True and kind != "parquet":
        raise TableError(
            f"dataset.stream=true is not allowed for {file.name}: streaming reads Parquet (write "
            "the table as Parquet, e.g. pandas' to_parquet, or set dataset.stream=false)"
        )
    source = TableSource(name=file.stem, path=str(file), digest=_file_digest(file), kind=kind)
    if kind == "parquet":
        table = _ParquetColumns(file, _parquet_files(file) if file.is_dir() else [file])
    else:
        table = _FrameColumns(_read_csv(file))
    chosen = _chosen_columns(table, str(target), features, source)
    if kind == "parquet" and stream is not False:
        from linreg_lab.engines.distributed import joined_rank, least_over_ranks

        size = table.num_rows * (len(chosen) + 1) * 4
        # auto: in a world of ranks (each loads its own copy, or holds its share), the least
        # budget of any rank decides for all, the same on every rank: their collectives must
        # agree. (stream=true needs no budget: it never holds.)
        budget = None if stream is True else int(
            least_over_ranks(streamed.memory_budget(memory_budget_gb)))  # fmt: skip
        if budget is None or size > budget:
            if budget is not None and joined_rank()[0] == 0:  # said once, by rank 0
                log.info("dataset: streamed: %d rows x %d columns as float32 take %.1f GB, over "
                         "the memory budget of %.1f GB (dataset.memory_budget_gb=%s)",
                         table.num_rows, len(chosen) + 1, size / 2**30, budget / 2**30,
                         "null: half of what this task may use" if memory_budget_gb is None
                         else memory_budget_gb)  # fmt: skip
            scaled = np.r_[np.full(len(chosen), bool(standardize)), bool(standardize_target)]
            # auto, in a world of ranks (SLURM's tasks, torchrun's): each may hold its share's
            # rows from the first epoch on, if the largest share fits the budget (load_streamed
            # decides, after the first pass).
            return streamed.load_streamed(
                table, [*chosen, str(target)], missing, split_fractions(split), scaled, source,
                shuffle_window, budget,
            )  # fmt: skip
    return _assemble_rows(table, str(target), chosen, missing, split_fractions(split),
                          standardize, standardize_target, source)  # fmt: skip


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


def load_frame(
    frame,
    target: str = "y",
    features: list[str] | None = None,
    missing: str = "error",
    split: dict | None = None,
    standardize: bool = True,
    standardize_target: bool = False,
    name: str = "frame",
) -> RegressionData:
    """A table a user's own function returns (its config node, instantiated first): a pandas
    DataFrame, or a pair (X, y) of arrays (columns x0..x{D-1}, target y); then as load_table."""
    import pandas as pd

    if isinstance(frame, tuple | list) and len(frame) == 2:
        X, y = (np.asarray(part, dtype=np.float64) for part in frame)
        if X.ndim != 2 or y.reshape(-1).shape[0] != X.shape[0]:
            raise DataError(f"dataset.frame: (X, y) of {X.shape} and {y.shape}: X must be "
                            "rows x columns and y one value per row")  # fmt: skip
        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
        frame[target] = y.reshape(-1)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"dataset.frame: a {type(frame).__name__}; the function must return a "
                        "pandas DataFrame or a pair (X, y) of arrays")  # fmt: skip
    source = TableSource(name=name, path=name, digest="", kind="frame")
    return from_frame(
        frame, target, features, missing, split, standardize, standardize_target, source
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
    return _assemble(
        _FrameColumns(frame), target, features, missing, split, standardize,
        standardize_target, source,
    )  # fmt: skip


class _FrameColumns:
    """A pandas DataFrame's columns, as one chunk."""

    def __init__(self, frame):
        frame.columns = [str(c) for c in frame.columns]
        self.frame = frame
        self.names = list(frame.columns)
        self.num_rows = frame.shape[0]

    def is_numeric(self, name: str) -> bool:
        import pandas as pd

        return bool(pd.api.types.is_numeric_dtype(self.frame[name]))

    def is_nested(self, name: str) -> bool:
        column = self.frame[name]
        if column.dtype != object:
            return False
        sample = column.dropna().head(100)
        return any(isinstance(v, list | dict | tuple | np.ndarray) for v in sample)

    def chunks(self, names: list[str]):
        yield [_numbers(self.frame[name].to_numpy()) for name in names]


class _ParquetColumns:
    """The columns of a Parquet file, or of a folder's Parquet files, read a row group at a
    time (pyarrow): the table never sits in memory whole beside the packed rows, and the next
    row group is read while one packs. A folder's files must have the same column names and
    types. Only their footers are read here; each file is open only while it is read (a
    folder of thousands of files holds no descriptor each)."""

    def __init__(self, path: Path, files: list[Path]):
        import pyarrow.parquet as pq

        self.where = f"dataset.path={path}"
        self.metadata = []
        for file in files:
            try:
                self.metadata.append(pq.read_metadata(file))
            except Exception as error:  # pyarrow's own errors: a file that is not Parquet
                raise TableError(
                    f"dataset.path={file}: cannot read it as parquet: {_first(error)}"
                ) from None
        self.schema = self.metadata[0].schema.to_arrow_schema()
        self.names = [str(n) for n in self.schema.names]
        _refuse_repeated_names(self.names, self.where)
        ours = [(f.name, f.type) for f in self.schema]
        for file, other in zip(files[1:], self.metadata[1:], strict=True):
            theirs = [(f.name, f.type) for f in other.schema.to_arrow_schema()]
            if theirs != ours:
                raise TableError(
                    f"{self.where}: {file.name} has other columns than {files[0].name} "
                    f"({_said(theirs)} against {_said(ours)}); a folder's files must have the "
                    "same column names and types, in the same order"
                )
        self.num_rows = sum(m.num_rows for m in self.metadata)
        self.paths = list(files)

    def is_numeric(self, name: str) -> bool:
        import pyarrow as pa

        kind = self.schema.field(name).type
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)

    def is_nested(self, name: str) -> bool:
        import pyarrow as pa

        return pa.types.is_nested(self.schema.field(name).type)

    def chunks(self, names: list[str]):
        from linreg_lab.streamed import read_groups

        groups = [(f, g) for f, m in enumerate(self.metadata) for g in range(m.num_row_groups)]
        yield from read_groups(self.paths, self.metadata, names, groups)


def _said(columns) -> str:
    return ", ".join(f"{name}: {kind}" for name, kind in columns)


def _numbers(values: np.ndarray) -> np.ndarray:
    """A column as float32 (kept as it is) or float64 (anything else); NA becomes NaN."""
    if values.dtype == np.float32 or values.dtype == np.float64:
        return values
    if values.dtype == object:  # pandas' nullable numbers with NA
        return np.array([np.nan if v is None or v != v else v for v in values], dtype=np.float64)
    return values.astype(np.float64)


def _first(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _assemble(
    table, target, features, missing, split, standardize, standardize_target, source
) -> RegressionData:
    """Choose and check the columns, split the rows, then pack them, scaled, into one
    (N, D + 1) float32 buffer: the training rows first, then validation, then test."""
    target = str(target)
    chosen = _chosen_columns(table, target, features, source)
    fractions = split_fractions(split)
    return _assemble_rows(table, target, chosen, missing, fractions, standardize,
                          standardize_target, source)  # fmt: skip


def _chosen_columns(table, target: str, features, source: TableSource) -> list[str]:
    """The feature columns, checked: named ones exist, are numeric and not the target; none
    named: every numeric column but the target (the others said in the log)."""
    where = f"dataset.path={source.path}"
    columns = table.names
    if table.num_rows == 0 or not columns:
        raise TableError(f"{where}: the table is empty")
    if target not in columns:
        raise TableError(
            f"dataset.target={target} is not allowed: no such column; the table has "
            f"{', '.join(columns[:30])}{' ...' if len(columns) > 30 else ''}"
        )
    if features is None:
        nested = [c for c in columns if table.is_nested(c)]
        if nested:
            raise TableError(f"{where}: nested columns cannot be features or the target: {nested}")
        chosen = [c for c in columns if c != target and table.is_numeric(c)]
        if not chosen:
            raise TableError(f"{where}: no numeric column besides the target {target!r}")
        left_out = [c for c in columns if c != target and c not in chosen]
        if left_out:  # said, not silent: a "1,234.5" column is text to pandas
            log.warning("dataset: %d columns left out, not numeric: %s (dataset.features=[...] "
                        "chooses the features)", len(left_out), left_out)  # fmt: skip
    else:
        chosen = [str(f) for f in features]
        if not chosen:
            raise TableError(
                "dataset.features=[] is not allowed: name at least one column (null: every "
                "numeric column but the target)"
            )
        repeated = _repeated(chosen)
        if repeated:
            raise TableError(f"dataset.features: {repeated} named more than once")
        unknown = [f for f in chosen if f not in columns]
        if unknown:
            raise TableError(
                f"dataset.features={unknown} is not allowed: no such column; the table has "
                f"{', '.join(columns[:30])}"
            )
        if target in chosen:
            raise TableError(f"dataset.features: the target {target!r} cannot be a feature")
        nested = [c for c in [*chosen, target] if table.is_nested(c)]
        if nested:
            raise TableError(f"{where}: nested columns cannot be features or the target: {nested}")
    text = [c for c in [*chosen, target] if not table.is_numeric(c)]
    if text:
        raise TableError(
            f"{where}: columns {text} are not numeric (linreg-lab does not encode categories: "
            "drop them with dataset.features=[...] or encode them in the file)"
        )
    return chosen


def _assemble_rows(
    table, target, chosen, missing, fractions, standardize, standardize_target, source
) -> RegressionData:
    where = f"dataset.path={source.path}"
    d = len(chosen)
    scaled = np.r_[np.full(d, bool(standardize)), bool(standardize_target)]
    packed = _Packed(table.num_rows, d, fractions)
    for chunk in table.chunks([*chosen, target]):
        packed.add(chunk, scaled)
    dropped = packed.drop_missing(missing, where)
    scaling = packed.standardize(scaled, chosen)
    rows = torch.from_numpy(packed.out)
    n_train, n_val = packed.train_rows, packed.val_rows

    def part(lo, hi):
        return rows[lo:hi, :d], rows[lo:hi, d:]

    X_train, y_train = part(0, n_train)
    splits = Split(*part(n_train, n_train + n_val), *part(n_train + n_val, rows.shape[0]),
                   fractions.val, fractions.test, fractions.seed)  # fmt: skip
    return RegressionData(
        X_train, y_train, true_w=None, true_b=None, noise_std=None, seed=fractions.seed,
        feature_names=tuple(chosen), split=splits, scaling=scaling, source=source,
        dropped_rows=dropped,
    )  # fmt: skip


class _Packed:
    """The table's rows as they are packed: out[dest[row]] = the row's values less a shift
    (a first estimate of each scaled column's mean, so float32 keeps their precision), with
    sums and squares of the training rows' shifted values for the standardization."""

    def __init__(self, num_rows: int, d: int, fractions):
        self.fractions = fractions
        self.width = d + 1
        self._layout(np.arange(num_rows))
        self.out = np.empty((num_rows, self.width), dtype=np.float32)
        self.shift: np.ndarray | None = None
        self.sums = np.zeros(self.width)
        self.squares = np.zeros(self.width)
        self.filled = 0
        self.bad = 0
        self.threads = max(1, min(len(os.sched_getaffinity(0)), 8))
        self.lock = threading.Lock()

    def _layout(self, sources: np.ndarray) -> None:
        """Split the rows sources (sorted) train / validation / test; dest: where each goes."""
        train, val, test = split_rows(len(sources), self.fractions)
        self.order = np.concatenate([sources[train], sources[val], sources[test]])
        self.train_rows, self.val_rows = len(train), len(val)

    def add(self, chunk: list[np.ndarray], scaled: np.ndarray) -> None:
        from linreg_lab.engines import kernels

        if self.shift is None:
            self.dest = np.empty(len(self.order), dtype=np.int64)
            self.dest[self.order] = np.arange(len(self.order))
            first = np.stack([c[:1000].astype(np.float64) for c in chunk], axis=1)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN only
                finite = np.where(np.isfinite(first), first, np.nan)
                estimate = np.nan_to_num(np.nanmean(finite, axis=0))
            self.shift = np.where(scaled, estimate, 0.0)
        kind = np.float32 if all(c.dtype == np.float32 for c in chunk) else np.float64
        columns = tuple(_read_only(np.ascontiguousarray(c, dtype=kind)) for c in chunk)
        n = len(chunk[0])
        cut = np.linspace(0, n, self.threads + 1).astype(np.int64)

        def pack(part: int) -> int:
            sums, squares = np.zeros(self.width), np.zeros(self.width)
            bad = kernels.pack_columns(
                columns, cut[part], cut[part + 1], self.filled, self.dest, self.train_rows,
                self.shift, self.out, sums, squares,
            )  # fmt: skip
            with self.lock:
                self.sums += sums
                self.squares += squares
            return bad

        if self.threads == 1 or n < 100_000:
            self.bad += sum(pack(part) for part in range(self.threads))
        else:
            with ThreadPoolExecutor(self.threads) as team:  # the kernel releases the GIL
                self.bad += sum(team.map(pack, range(self.threads)))
        self.filled += len(chunk[0])

    def drop_missing(self, missing: str, where: str) -> int:
        """Rows with NaN or infinite values: an error, or dropped (the split is then drawn over
        the rows kept, as if the table had only those). Returns how many were dropped."""
        if not self.bad:
            return 0
        finite = np.isfinite(self.out).all(axis=1)
        dropped = int(len(finite) - finite.sum())
        if missing == "error":
            raise TableError(
                f"{where}: {dropped} of {len(finite)} rows have NaN, inf or empty values; "
                "set dataset.missing=drop to train without them"
            )
        if dropped == len(finite):
            raise TableError(f"{where}: every row has a missing value ({dropped} dropped)")
        log.warning("dataset: dropped %d of %d rows with NaN, inf or empty values",
                    dropped, len(finite))  # fmt: skip
        self._layout(np.sort(self.order[finite]))  # the source rows kept
        self.out = self.out[self.dest[self.order]]
        train = self.out[: self.train_rows].astype(np.float64)
        self.sums, self.squares = train.sum(axis=0), (train * train).sum(axis=0)
        return dropped

    def standardize(self, scaled: np.ndarray, names) -> Scaling:
        """Scale the scaled columns by the training rows' mean and standard deviation
        (data.standardization, which refuses too few rows and constant columns)."""
        from linreg_lab.engines import kernels

        offset, scale, scaling = standardization(
            self.train_rows, self.sums, self.squares, self.shift, scaled, names
        )
        if scaled.any():
            kernels.affine_columns(self.out, offset, 1.0 / scale)
        return scaling


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False  # one type for every column (Arrow's are read-only)
    return view


def _existing_file(path: str) -> Path:
    if not path or path == "???":
        raise TableError("dataset.path is not set: give a CSV or Parquet file")
    file = Path(os.path.expanduser(str(path)))
    file = file if file.is_absolute() else Path.cwd() / file
    if not file.exists():
        raise TableError(f"dataset.path={path} is not allowed: no such file ({file})")
    if file.is_dir():
        _parquet_files(file)  # refused here if it holds none
        return file.resolve()
    if _kind(file) is None:
        raise TableError(
            f"dataset.path={path} is not allowed: a .csv, .csv.gz, .tsv or .parquet file"
        )
    if file.stat().st_size == 0:
        raise TableError(f"dataset.path={path}: the file is empty")
    return file.resolve()


def _parquet_files(folder: Path) -> list[Path]:
    """The Parquet files in folder and its subfolders (as Spark, pyarrow and pandas write a
    dataset: part-*.parquet), in the natural order of their paths (part-2 before part-10);
    files and folders whose name starts with "_" or "." (_SUCCESS, _metadata, .crc files) are
    not data. Partition values in folder names (a=1/) are not read as columns."""
    files = sorted(
        (p for p in folder.rglob("*")
         if p.is_file() and _kind(p) == "parquet"
         and not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts)),
        key=lambda p: [int(t) if t.isdigit() else t
                       for t in re.split(r"(\d+)", str(p.relative_to(folder)))],
    )  # fmt: skip
    if not files:
        raise TableError(
            f"dataset.path={folder} is not allowed: a folder with no .parquet files (a folder "
            "is read as one Parquet dataset; a CSV must be named itself)"
        )
    return files


def _kind(file: Path) -> str | None:
    name = file.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "csv"
    return None


def _read_csv(file: Path):
    import pandas as pd

    where = f"dataset.path={file}"
    try:
        sep = "\t" if file.name.lower().endswith(".tsv") else ","
        # The header as written: pandas renames a repeated name (x1, x1.1) without a word.
        header = pd.read_csv(file, sep=sep, header=None, nrows=1, dtype=str)
        if len(header):
            _refuse_repeated_names([str(v) for v in header.iloc[0].tolist()], where)
        return pd.read_csv(file, sep=sep)
    except TableError:
        raise
    except (ValueError, OSError, ImportError, pd.errors.ParserError) as error:
        raise TableError(f"{where}: cannot read it as csv: {_first(error)}") from None
    except Exception as error:
        raise TableError(f"{where}: cannot read it as csv: {error}") from None


def _repeated(names: list[str]) -> list[str]:
    """The names that appear more than once, sorted."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _refuse_repeated_names(names: list[str], where: str) -> None:
    repeated = _repeated(names)
    if repeated:
        raise TableError(
            f"{where}: column names {repeated} appear more than once; give each column its own "
            "name in the file"
        )


def _file_digest(file: Path) -> str:
    """8 hex digits naming the file's content (data.content_digest: the same bytes, the same
    digest, wherever and whenever written)."""
    return (content_digest(file) or "")[:8]
