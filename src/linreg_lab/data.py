"""RegressionData, what every engine trains on, and the synthetic problem y = X w + b + noise
(its truth kept beside the data). Real tables are read by linreg_lab.tables."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

log = logging.getLogger(__name__)

# Rows per chunk of the random stream: a chunk's X values, then its noise (fixes the data a
# seed gives).
_CHUNK_ROWS = 1 << 18
# Rows drawn per call into a contiguous buffer (a multiple of 16: see _draw_parts).
_DRAW_ROWS = 1 << 12


class DataError(ValueError):
    """Data that cannot be trained on; str() is the one line shown to the user."""


def content_digest(path: str | os.PathLike) -> str | None:
    """16 hex digits of SHA-256 over the file's bytes (a folder: each file's name and bytes,
    by name), or None where there is no such file. What a re-run compares to know the data
    did not change: rewriting identical bytes gives the same digest.

    Hashing reads the whole file once (~0.6 GB/s here: ~7 s for 4 GB); the digest is then
    kept in ~/.cache/linreg-lab/digests.json under the file's path, size, mtime and inode,
    so it is read again only once the file is rewritten or touched."""
    target = Path(os.path.expanduser(str(path))).absolute()
    if not target.exists():
        return None
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    stats = [(str(f), f.stat()) for f in files]
    key = "|".join(f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" for name, st in stats)
    cache = _digest_cache()
    if key in cache:
        return cache[key]
    folder = target.is_dir()
    digest = hashlib.sha256()
    for file in files:
        if folder:
            digest.update(str(file.relative_to(target)).encode() + b"\0")
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    value = digest.hexdigest()[:16]
    _remember_digest(cache, key, value)
    return value


def _digest_file() -> Path:
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(home) / "linreg-lab" / "digests.json"


def _digest_cache() -> dict[str, str]:
    try:
        return json.loads(_digest_file().read_text())
    except (OSError, ValueError):
        return {}


def _remember_digest(cache: dict[str, str], key: str, value: str) -> None:
    """Kept for the next run (the last 1000 files); a cache that cannot be written is skipped."""
    cache[key] = value
    kept = dict(list(cache.items())[-1000:])
    file = _digest_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=file.parent, prefix=".digests.")
        with os.fdopen(fd, "w") as out:
            json.dump(kept, out)
        os.replace(temporary, file)  # whole or not at all, whoever else writes it
    except OSError:
        pass


@dataclass(frozen=True)
class SplitFractions:
    val: float = 0.2
    test: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Scaling:
    """How features and target were standardized (training rows' statistics): a model's
    parameters in original units are w / x_scale * y_scale, and b accordingly."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: float = 0.0
    y_scale: float = 1.0

    def original_units(self, w: np.ndarray, b: float) -> tuple[np.ndarray, float]:
        """(w, b) of a model on the scaled data, as parameters on the original columns."""
        w_original = np.asarray(w, np.float64) / self.x_scale * self.y_scale
        b_original = b * self.y_scale + self.y_mean - float(w_original @ self.x_mean)
        return w_original, b_original

    @property
    def is_identity(self) -> bool:
        return (
            not self.x_mean.any() and (self.x_scale == 1).all()
            and self.y_mean == 0 and self.y_scale == 1
        )  # fmt: skip


def standardization(
    n: int, sums: np.ndarray, squares: np.ndarray, shift: np.ndarray, scaled: np.ndarray, names
) -> tuple[np.ndarray, np.ndarray, Scaling]:
    """A table's standardization from its n training rows: sums and squares of each column's
    values less shift (the features, then the target), scaled: which columns are standardized.
    Returns (offset, scale, Scaling): a column's value as trained is (value - shift - offset) /
    scale (an unscaled column's offset is -shift and its scale 1: it keeps its value). Refuses
    too few rows for least squares and a constant standardized column, in one line each."""
    d = len(shift) - 1
    if n <= d:
        raise DataError(
            f"dataset.split: {n} training rows for {d} features; least squares needs more rows "
            "than features (lower dataset.split.val or dataset.split.test)"
        )
    mean = sums / n
    scale = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
    constant = [names[j] for j in range(d) if scaled[j] and not scale[j] > 0]
    if constant:
        raise DataError(
            f"dataset.standardize=true is not allowed: {constant} are constant on the training "
            "rows (drop them with dataset.features=[...])"
        )
    if scaled[d] and not scale[d] > 0:
        raise DataError("dataset.standardize_target=true: the target is constant")
    offset = np.where(scaled, mean, -shift)
    scale = np.where(scaled, scale, 1.0)
    center = shift + offset
    return offset, scale, Scaling(center[:d], scale[:d], float(center[d]), float(scale[d]))


@dataclass(frozen=True)
class Split:
    """The held-out rows: validation and test (either may have no rows)."""

    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    val: float  # the fractions asked for, and the permutation's seed
    test: float
    seed: int


@dataclass(frozen=True)
class TableSource:
    """Where real data came from: what MLflow's dataset entry says."""

    name: str
    path: str
    digest: str
    kind: str  # "csv", "parquet", "sklearn"


@dataclass(frozen=True)
class RegressionData:
    """Training features X (N, D) and targets y (N, 1); for synthetic data the parameters that
    generated them (true_w, true_b, noise_std), for a table its source; held-out rows in split."""

    X: torch.Tensor
    y: torch.Tensor
    true_w: torch.Tensor | None  # (D,); None: no truth is known (real data)
    true_b: float | None
    noise_std: float | None
    seed: int
    feature_names: tuple[str, ...] | None = None
    split: Split | None = None
    scaling: Scaling | None = None
    source: TableSource | None = None
    dropped_rows: int = 0
    streamed: ClassVar[bool] = False  # in memory (streamed.StreamedTable: read in passes)

    @property
    def has_truth(self) -> bool:
        return self.true_w is not None

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    @property
    def num_features(self) -> int:
        return self.X.shape[1]

    @property
    def has_validation(self) -> bool:
        return self.split is not None and self.split.X_val.shape[0] > 0

    @property
    def has_test(self) -> bool:
        return self.split is not None and self.split.X_test.shape[0] > 0

    def to(self, device: torch.device) -> RegressionData:
        if self.X.device == device:
            return self
        return dataclasses.replace(self, X=self.X.to(device), y=self.y.to(device))


def _draw_parts(start: int, stop: int, d: int):
    """(begin, end) ranges of _DRAW_ROWS rows covering rows start..stop - 1; the last range
    takes a remainder of fewer than 16 values with it. torch draws normal values 16 at a
    time and a tail of fewer differently, so these parts draw what one call would."""
    begin = start
    while begin < stop:
        end = min(begin + _DRAW_ROWS, stop)
        if (stop - end) * d < 16:
            end = stop
        yield begin, end
        begin = end


def packed_rows(X: torch.Tensor, y: torch.Tensor) -> np.ndarray | None:
    """The (N, D + 1) array [X y] when X and y are views of one such CPU buffer (as
    make_synthetic_regression makes them), else None. ~3 us: it runs once per fit."""
    if X.dim() != 2 or X.device.type != "cpu" or X.dtype != y.dtype:
        return None
    n, d = X.shape
    row = d + 1
    packed = (
        X.stride() == (row, 1)
        and y.numel() == n
        and y.stride()[0] == row
        and y.data_ptr() - X.data_ptr() == d * X.element_size()
    )
    return torch.as_strided(X, (n, row), (row, 1)).numpy() if packed else None


def resolve_true_w(
    true_w: list[float] | None, num_features: int | None, generator: torch.Generator
) -> torch.Tensor:
    """The given weights, or num_features seeded N(0, 1) weights when the two disagree."""
    if num_features is not None and (true_w is None or len(true_w) != num_features):
        if true_w is not None:
            log.info(
                "dataset.num_features=%d differs from len(dataset.true_w)=%d: "
                "drawing a seeded random true_w",
                num_features,
                len(true_w),
            )
        return torch.randn(num_features, generator=generator)
    return torch.tensor(list(true_w), dtype=torch.float32)


def make_synthetic_regression(
    true_w: list[float] | None = (2.8, -1.7, 3.6),
    true_b: float = 3.0,
    num_features: int | None = None,
    num_samples: int = 1000,
    noise_std: float = 0.01,
    seed: int = 0,
    split: dict | None = None,
) -> RegressionData:
    """Draw X ~ N(0, 1) and y = X true_w + true_b + N(0, noise_std^2), reproducibly from seed."""
    generator = torch.Generator().manual_seed(seed)
    w = resolve_true_w(true_w, num_features, generator)
    d = w.numel()
    # One (N, D + 1) buffer, row i = [x_i, y_i]: a shuffled minibatch reads each sampled row at
    # random, and its target then comes in the row's own cache lines rather than one more
    # (~14% faster epochs at N 10^7, D 100). numpy's allocator asks Linux for huge pages on
    # large arrays: 2 MB pages spare a page-table walk per row (~1.5-2x at N 10^6, D 100).
    rows = torch.from_numpy(np.empty((num_samples, d + 1), np.float32))
    # First touch on torch's threads: this VM faults pages in at ~0.5 GB/s on one thread, and
    # ~2 GB/s on two (N 10^7, D 100: 6-8 s to make the data instead of 11-17 s).
    rows.zero_()
    X, y = rows[:, :d], rows[:, d:]
    # Drawn into small contiguous buffers (torch draws 6x slower into a strided view) with the
    # values one draw per chunk gives: the chunks fix the stream's order, X's then the noise's.
    X_part = torch.empty(min(_DRAW_ROWS + 16, num_samples), d)
    y_buffer = torch.empty(min(_CHUNK_ROWS, num_samples), 1)
    for start in range(0, num_samples, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, num_samples)
        y_chunk = y_buffer[: stop - start]
        for begin, end in _draw_parts(start, stop, d):
            part = X_part[: end - begin]
            part.normal_(generator=generator)
            torch.mv(part, w, out=y_chunk[begin - start : end - start].view(-1))
            X[begin:end] = part
        y_chunk.add_(torch.randn(y_chunk.shape, generator=generator), alpha=noise_std)
        y_chunk.add_(true_b)
        y[start:stop] = y_chunk
    if not math.isfinite(float(y.abs().max())):
        raise DataError("dataset: generated targets are not finite; check true_w and true_b")
    data = RegressionData(X, y, w, float(true_b), float(noise_std), seed)
    if split and (split.get("val") or split.get("test")):
        return split_data(data, rows, split)
    return data


def split_data(data: RegressionData, rows: torch.Tensor, split: dict) -> RegressionData:
    """Synthetic data with held-out rows; rows is its packed (N, D + 1) buffer."""
    fractions = split_fractions(split)
    train, val, test = (torch.from_numpy(r) for r in split_rows(data.num_samples, fractions))
    d = data.num_features
    kept = rows[train]  # packed again: each target beside its row
    val_rows, test_rows = rows[val], rows[test]
    held_out = Split(
        val_rows[:, :d].contiguous(), val_rows[:, d:].contiguous(),
        test_rows[:, :d].contiguous(), test_rows[:, d:].contiguous(),
        fractions.val, fractions.test, fractions.seed,
    )  # fmt: skip
    return dataclasses.replace(data, X=kept[:, :d], y=kept[:, d:], split=held_out)


def split_fractions(split: dict | None) -> SplitFractions:
    """dataset.split's fractions, checked: each in [0, 1), rows left to train on."""
    try:
        fractions = SplitFractions(**(dict(split) if split else {}))
    except TypeError:
        raise DataError(f"dataset.split={split} is not allowed: it takes val, test, seed") from None
    for name in ("val", "test"):
        value = getattr(fractions, name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not 0 <= value < 1 or math.isnan(value):
            raise DataError(f"dataset.split.{name}={value} is not allowed: a fraction in [0, 1)")
    seed = fractions.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise DataError(f"dataset.split.seed={seed} is not allowed: a whole number >= 0")
    if fractions.val + fractions.test >= 1:
        raise DataError(
            f"dataset.split: val {fractions.val} + test {fractions.test} >= 1 leaves no "
            "training rows"
        )
    return fractions


def split_rows(n: int, fractions: SplitFractions):
    """(train, val, test) row indices: a permutation seeded by split.seed, cut in that order."""
    n_val, n_test = round(n * fractions.val), round(n * fractions.test)
    if n_val + n_test == 0:
        return np.arange(n), np.arange(0), np.arange(0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(fractions.seed)).numpy()
    role = np.zeros(n, dtype=np.int8)  # each part's rows in order, without sorting (O(n))
    role[order[:n_val]] = 1
    role[order[n_val : n_val + n_test]] = 2
    return tuple(np.flatnonzero(role == part) for part in (0, 1, 2))
