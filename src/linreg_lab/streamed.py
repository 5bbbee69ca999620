"""A Parquet table too large for memory, trained on in passes over its row groups.

tables.load_table returns a StreamedTable instead of RegressionData when dataset.stream says
so. Nothing here holds more than a window of rows and a few row groups (one read ahead; in
the first pass one a thread), except where ranks hold their share (StreamedTable.hold):

- One pass at load time gathers, per part (training, validation, test), the float64 sums
  [X 1 y]' [X 1 y] of the rows (centred by a first estimate of each column's mean, so that
  float64 keeps their precision). The standardization, the least-squares reference, the
  stability bound and every logged loss (train/, val/, test/loss: exact quadratic forms of
  the parameters) come from these sums, never from the rows again.
- Each epoch reads the row groups again (shuffled, seeded), keeps their training rows,
  standardizes them, and fills a window of `window` rows (a multiple of the batch size);
  each full window's rows are shuffled (seeded) and trained on in batches; what is left at
  the end is the last window. Each row group's count of training rows, from the first pass,
  fixes every window's bounds before a row is read: so data-parallel ranks (shares) can each
  read only their own row groups and still walk one process's windows. trainer.shuffle=false
  keeps the file's order throughout: the batches are then exactly those of the same table
  in memory.
- The split: each row's part is drawn from a seeded hash of its row number in the table
  (dataset.split.seed), so the parts' sizes are the fractions up to sampling noise (in memory
  they are exact: a permutation of all rows, which streaming cannot hold).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from linreg_lab import signals
from linreg_lab.data import DataError, Scaling, SplitFractions, TableSource, standardization
from linreg_lab.engines.ahead import Ahead, in_order
from linreg_lab.engines.least_squares import LeastSquares, from_sums

log = logging.getLogger(__name__)
TRAIN, VAL, TEST = 0, 1, 2
_GRAM_ROWS = 1 << 14  # rows per product in the statistics pass (13 MB of float64 at D 100)
_PASS_THREADS = 4  # at most, in the statistics pass: each holds a row group


class RowGroups:
    """Reads row groups of a table's files (paths, and their footers where known), with at
    most one file open at a time; pyarrow's errors become one line naming the file."""

    def __init__(self, paths, metadata=None):
        self.paths = [str(p) for p in paths]
        self.metadata = metadata
        self._open: tuple[int, object] | None = None

    def read(self, file: int, group: int, columns: list[str]):
        import pyarrow.parquet as pq

        path = self.paths[file]
        try:
            if self._open is None or self._open[0] != file:
                self.close()
                footer = self.metadata[file] if self.metadata is not None else None
                self._open = (file, pq.ParquetFile(path, metadata=footer))
            return self._open[1].read_row_group(group, columns=columns)
        except Exception as error:  # pyarrow's own: a file changed or broken since
            text = str(error).strip().splitlines()
            why = text[0] if text else type(error).__name__
            raise DataError(f"dataset.path={path}: cannot read it as parquet: {why}") from None

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def __enter__(self) -> RowGroups:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def memory_budget(budget_gb: float | None) -> int:
    """Bytes a table may take in memory before dataset.stream=auto streams it: budget_gb, or
    half of the memory this process may use (this machine's, its cgroup's limit where lower,
    SLURM's allocation on this node where lower) shared by the tasks of this job on it
    (SLURM's, torchrun's: each would load its own copy)."""
    from linreg_lab.engines.distributed import tasks_on_this_node

    if budget_gb is not None:
        return int(float(budget_gb) * 2**30)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min([total, *_memory_limits()]) // 2 // tasks_on_this_node()


def _memory_limits(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup",
                   env=os.environ) -> list[int]:  # fmt: skip
    """The limits on this process's memory, in bytes: its cgroup's and every parent's (v2
    memory.max, v1 memory.limit_in_bytes), and SLURM's allocation on this node."""
    limits = []
    try:
        with open(proc_cgroup) as listed:
            lines = listed.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:  # cgroup v2: one hierarchy
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts) + 1):
            try:
                with open(os.path.join(base, *parts[:depth], name)) as limit:
                    text = limit.read().strip()
            except OSError:
                continue
            if text.isdigit():  # v2 says "max" for none
                limits.append(int(text))
    per_node, per_cpu = env.get("SLURM_MEM_PER_NODE", ""), env.get("SLURM_MEM_PER_CPU", "")
    cpus = env.get("SLURM_CPUS_ON_NODE", "")
    if per_node.isdigit() and int(per_node) > 0:  # megabytes; 0: the whole node's
        limits.append(int(per_node) * 2**20)
    elif per_cpu.isdigit() and cpus.isdigit() and int(per_cpu) * int(cpus) > 0:
        limits.append(int(per_cpu) * int(cpus) * 2**20)
    return limits


def parts_of(rows: np.ndarray, fractions: SplitFractions) -> np.ndarray:
    """Each row's part (TRAIN, VAL, TEST) from its row number: a seeded hash (splitmix64 of
    seed and row), uniform in [0, 1), cut at val and val + test."""
    if not fractions.val and not fractions.test:
        return np.zeros(len(rows), np.int8)
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(fractions.seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    parts = np.zeros(len(rows), np.int8)
    parts[u < fractions.val + fractions.test] = TEST
    parts[u < fractions.val] = VAL
    return parts


@dataclass(frozen=True)
class StreamedTable:
    """A Parquet table's training rows, read again each epoch; what a run knows of the data
    without holding it (see the module's notes). Used where a RegressionData would be."""

    files: tuple[str, ...]
    metadata: tuple = field(compare=False, repr=False)  # each file's footer (pyarrow's)
    groups: tuple[tuple[int, int, int], ...]  # (file, row group, first row in the table)
    group_rows: tuple[int, ...]  # each row group's training rows (the first pass's count)
    columns: tuple[str, ...]  # the features, then the target
    fractions: SplitFractions
    missing: str
    scaling: Scaling
    optimum: LeastSquares  # the training rows'
    val_sums: LeastSquares | None
    test_sums: LeastSquares | None
    source: TableSource
    held_out_rows: tuple[int, int]
    dropped_rows: int
    window: int  # rows shuffled together
    # Data-parallel ranks keep the rows of their row groups from the first epoch on (shares):
    # each rank's share fits its memory where the table does not (tables.load_table decides).
    hold: bool = False
    streamed: ClassVar[bool] = True
    true_w: ClassVar[None] = None
    true_b: ClassVar[None] = None
    noise_std: ClassVar[None] = None
    split: ClassVar[None] = None

    @property
    def num_samples(self) -> int:
        return self.optimum.num_samples

    @property
    def num_features(self) -> int:
        return len(self.columns) - 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.columns[:-1]

    @property
    def seed(self) -> int:
        return self.fractions.seed

    @property
    def has_truth(self) -> bool:
        return False

    @property
    def has_validation(self) -> bool:
        return self.val_sums is not None

    @property
    def has_test(self) -> bool:
        return self.test_sums is not None

    @property
    def features_nbytes(self) -> int:
        """What the training rows would take in memory as float32 (they never are whole)."""
        return self.num_samples * self.num_features * 4

    def to(self, device: torch.device) -> StreamedTable:
        return self  # its windows are made on the CPU, where the compiled steps run

    def windows(self, epoch: int, shuffle: bool, seed: int, batch_size: int) -> Iterator:
        """Epoch epoch's training rows as (rows, order): rows a float32 (n, D + 1) array of
        standardized [x y] (a buffer reused by the next window: train on it before asking for
        the next), order the int64 order to visit them in.

        Each row group's columns are written straight into the window, standardized, by one
        compiled loop (kernels.pack_window: the values a loaded table's pack_columns and
        affine_columns give); rows of other parts, and rows with a missing value when the first
        pass dropped some, go to a scratch row past the window."""
        for rows, order, _ in self._windows(epoch, shuffle, seed, batch_size, 0, 1):
            yield rows, order

    def shares(
        self,
        epoch: int,
        shuffle: bool,
        seed: int,
        batch_size: int,
        rank: int,
        size: int,
        buffers: int = 1,
        held: dict | None = None,
    ) -> Iterator:
        """A data-parallel rank's view of epoch epoch's windows (size ranks): the same windows
        and orders on every rank, each rank reading only the row groups it owns (_owners: in
        the epoch's group order, each to the rank holding the fewest rows). Yields (rows, order,
        owned): rows the window's rows this rank owns (owned of them, in window order), order
        the window's order with those rows numbered 0 .. owned - 1 and the others owned ..
        n - 1 (so a global batch's part here is its entries below owned). buffers: how many
        windows' rows are kept (in turn): 2 lets a window be made while the one before trains.

        held: where the table holds (self.hold) and there are ranks, this rank's training
        rows, kept by the caller from epoch to epoch (_held_rows): each row group is then the same
        rank's every epoch (_owners in the table's order), read and packed into it in the first
        epoch only, and rows is all of it, trained where it lies (no window is copied)."""
        held = held if self.hold and size > 1 else None
        windows = self._windows(epoch, shuffle, seed, batch_size, rank, size, buffers, held)
        for rows, order, places in windows:
            owned = len(rows)
            if size > 1:
                here = places >= 0
                relabel = np.empty(len(order), np.int64)
                relabel[here] = places[here]
                relabel[~here] = np.arange(owned, owned + len(order) - int(here.sum()))
                order = relabel[order]
            yield rows, order, owned

    def _windows(self, epoch, shuffle, seed, batch_size, rank, size, buffers=1,
                 held: dict | None = None) -> Iterator:  # fmt: skip
        """(rows, order, places): the epoch's windows, each as the rows rank reads of it (or
        all the rows it holds), the window's order, and where in rows each of the window's
        rows is (-1: another rank's; None for one rank).

        Every window is cut from the epoch's training rows by the training rows each row group
        holds (counted by the first pass), so a rank knows every window's bounds without reading
        the groups of the others."""
        from linreg_lab.engines import kernels

        width = len(self.columns)
        size_rows = max(batch_size, -(-self.window // batch_size) * batch_size)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.groups)) if shuffle else np.arange(len(self.groups))
        counts = np.asarray(self.group_rows, np.int64)[order]  # training rows, epoch order
        ends = np.cumsum(counts)
        starts = ends - counts
        total = int(ends[-1]) if len(ends) else 0
        center = np.r_[self.scaling.x_mean, self.scaling.y_mean]
        inverse = 1.0 / np.r_[self.scaling.x_scale, self.scaling.y_scale]
        if held is None:
            owners = _owners(counts, size)
            # Each window's rows, the last row a scratch row; buffers of them, used in turn.
            rings = [np.empty((size_rows + 1, width), np.float32) for _ in range(buffers)]
        else:  # each group the same rank's every epoch: the one that holds its rows
            if not held:
                held.update(_held_rows(np.asarray(self.group_rows, np.int64), rank, size,
                                       width))  # fmt: skip
            owners = np.asarray(held["owners"])[order]
            rings = [held["rows"]]  # its last row a scratch row
        mine = [p for p, owner in enumerate(owners) if owner == rank]
        groups = [self.groups[order[p]] for p in mine
                  if held is None or order[p] not in held["packed"]]  # fmt: skip
        with ReadAhead(self.files, self.metadata, self.columns, groups) as ahead:
            reading = _with_parts(ahead, self.fractions, groups)
            positions = iter(mine)
            p, group = next(positions, None), None
            for lo in range(0, total, size_rows):
                hi = min(lo + size_rows, total)
                buffer = rings[(lo // size_rows) % len(rings)]
                places = np.full(hi - lo, -1, np.int64) if size > 1 else None
                filled = 0
                while p is not None and starts[p] < hi:
                    a, b = max(starts[p], lo) - starts[p], min(ends[p], hi) - starts[p]
                    if held is not None:
                        index = int(order[p])
                        if index not in held["packed"]:  # the first epoch: packed where kept
                            columns, train, dest = self._training_rows(
                                next(reading), counts[p], len(buffer) - 1)  # fmt: skip
                            dest[train] = held["offsets"][index] + np.arange(len(train))
                            kernels.pack_window(columns, 0, len(dest), dest, center, inverse,
                                                buffer)  # fmt: skip
                            held["packed"].add(index)
                        first = held["offsets"][index] + a
                    else:
                        if group is None:
                            group = self._training_rows(next(reading), counts[p], size_rows)
                        columns, train, dest = group
                        rows = train[a:b]
                        dest[rows] = np.arange(filled, filled + len(rows))
                        kernels.pack_window(columns, int(rows[0]), int(rows[-1]) + 1, dest,
                                            center, inverse, buffer)  # fmt: skip
                        first = filled
                    if places is not None:
                        places[starts[p] + a - lo : starts[p] + b - lo] = np.arange(
                            first, first + b - a)  # fmt: skip
                    filled += b - a
                    if ends[p] > hi:  # the group goes on in the next window
                        break
                    p, group = next(positions, None), None
                n = hi - lo
                rows = buffer[:filled] if held is None else buffer[:-1]
                yield rows, (rng.permutation(n) if shuffle else np.arange(n)), places

    def _training_rows(self, read: tuple, expected: int, scratch: int) -> tuple:
        """A row group's (columns, its training rows, their places in the window: scratch
        until packed), checked against the first pass's count."""
        columns, parts = read
        kept = parts == TRAIN
        if self.dropped_rows:  # (a pass over every value: only where some were missing)
            for column in columns:
                kept &= np.isfinite(column)
        train = np.flatnonzero(kept)
        if len(train) != expected:
            raise DataError(
                f"dataset.path={self.source.path}: a row group holds {len(train)} training "
                f"rows, {expected} in the first pass: the table changed while training"
            )
        return columns, train, np.full(len(parts), scratch, np.int64)


def _share_fits(group_rows: tuple[int, ...], width: int, size: int, budget: int) -> bool:
    """Whether every rank of size could hold its row groups' training rows (_held_rows: whole
    groups, so one rank may hold up to a group more than its 1 / size) within budget bytes;
    said once (rank 0) when they do. The same answer on every rank (the first pass's counts,
    the least budget)."""
    from linreg_lab.engines.distributed import joined_rank

    counts = np.asarray(group_rows, np.int64)
    owners = np.asarray(_owners(counts, size))
    largest = max(int(counts[owners == rank].sum()) for rank in range(size)) + 1  # scratch row
    fits = largest * width * 4 <= budget
    if fits and joined_rank()[0] == 0:
        log.info("dataset: each of the %d ranks holds its share's rows from the first epoch on "
                 "(at most %.2f GB a rank, within the budget of %.2f GB)", size,
                 largest * width * 4 / 2**30, budget / 2**30)  # fmt: skip
    return fits


def _held_rows(group_rows: np.ndarray, rank: int, size: int, width: int) -> dict:
    """What a rank that holds its share keeps from epoch to epoch (StreamedTable.shares'
    held): each row group's owner (_owners in the table's order, by training rows), the
    rows of its own groups (one float32 array, a scratch row last), where each group's rows
    begin in it, and which groups are packed there already."""
    owners = _owners(group_rows, size)
    mine = [g for g, owner in enumerate(owners) if owner == rank]
    ends = np.cumsum(group_rows[mine]) if mine else np.zeros(0, np.int64)
    rows = np.empty((int(ends[-1]) + 1 if mine else 1, width), np.float32)
    return {"owners": owners, "rows": rows, "packed": set(),
            "offsets": dict(zip(mine, (ends - group_rows[mine]).tolist()))}  # fmt: skip


def _owners(counts: np.ndarray, size: int) -> list[int]:
    """The rank that reads each row group (counts: their training rows, in the epoch's
    order): each, in turn, the rank holding the fewest rows so far (the lowest on a tie), so
    the ranks' rows are even whatever the groups' sizes; -1 for a group without any. Every
    rank draws the same owners from the same counts."""
    held = [0] * size
    owners = []
    for count in counts.tolist():
        if not count:
            owners.append(-1)
            continue
        rank = held.index(min(held))
        held[rank] += count
        owners.append(rank)
    return owners


class ReadAhead(Ahead):
    """Each row group (file, group, ...) of groups as its chosen columns: read-only numpy arrays
    of one type (float32 when every column is, else float64; nulls become NaN; Arrow's own
    buffer where it is one chunk of that type). Iterate it once, then close it (or use it as a
    context manager).

    The first row group is read from the moment this is made, each next one on the same
    thread while the caller works on the one before (engines.ahead; pyarrow releases the GIL);
    one file is open at a time. A data-parallel rank makes it as an epoch starts, so its
    first group is read while the other ranks train theirs."""

    def __init__(self, paths, metadata, columns: list[str], groups):
        self._files = RowGroups(paths, metadata)
        self._columns = list(columns)
        super().__init__(self._read(item) for item in groups)

    def _read(self, item) -> tuple:
        return _as_arrays(self._files.read(item[0], item[1], self._columns))

    def close(self) -> None:
        super().close()
        self._files.close()


def _as_arrays(chunk) -> tuple:
    """A row group's columns (a pyarrow Table) as ReadAhead gives them."""
    import pyarrow as pa

    single = all(pa.types.is_float32(column.type) for column in chunk.columns)
    kind = pa.float32() if single else pa.float64()
    arrays = []
    for column in chunk.columns:
        column = column.cast(kind)
        array = column.chunk(0) if column.num_chunks == 1 else column
        view = np.ascontiguousarray(array.to_numpy(zero_copy_only=False)).view()
        view.flags.writeable = False  # one type for every column (Arrow's are read-only)
        arrays.append(view)
    return tuple(arrays)


def read_groups(paths, metadata, columns: list[str], groups) -> Iterator[tuple]:
    """ReadAhead's row groups, as a generator that closes it."""
    with ReadAhead(paths, metadata, columns, groups) as reading:
        yield from reading


def _with_parts(arrays, fractions: SplitFractions, groups) -> Iterator[tuple[tuple, np.ndarray]]:
    """(columns, parts) of each row group (file, group, first row) of groups: its columns
    (arrays: ReadAhead's) and each row's part (parts_of)."""
    for (_, _, first), chosen in zip(groups, arrays, strict=True):
        yield chosen, parts_of(np.arange(first, first + len(chosen[0])), fractions)


def _pass_workers() -> int:
    """Threads of the first pass: the run's (torch's), at least 2 (one reads while one sums,
    as a rank given one thread), at most _PASS_THREADS (each holds a row group)."""
    return min(_PASS_THREADS, max(2, torch.get_num_threads()))


def _pass_sums(files, metadata, columns: list[str], owned, fractions: SplitFractions,
               missing: str, shift: np.ndarray, held: list) -> tuple:  # fmt: skip
    """The first pass over the row groups owned ((file, group, first row) each): each part's
    float64 sums [x - shift, 1, y - shift]' [x - shift, 1, y - shift] (3 x width x width),
    each part's rows, the rows with a missing value, and each group's training rows. held:
    the first group's columns where read already (taken from the list: let go once summed).

    Each thread (_pass_workers) reads and sums one row group at a time (engines.ahead.in_order:
    the groups' sums added in their order, the same bits on any number of threads). A missing
    value under missing=error ends the pass at that group."""
    width = len(columns) + 1
    sums, counts, dropped, train_rows = np.zeros((3, width, width)), np.zeros(3), 0, []
    local, opened = threading.local(), []

    def summed(k: int) -> tuple:
        if k == 0 and held:
            arrays = held.pop()
        else:
            if not hasattr(local, "files"):
                local.files = RowGroups(files, metadata)
                opened.append(local.files)
            arrays = _as_arrays(local.files.read(owned[k][0], owned[k][1], columns))
        row = owned[k][2]
        return _group_sums(arrays, parts_of(np.arange(row, row + len(arrays[0])), fractions),
                           shift)  # fmt: skip

    try:
        with contextlib.closing(in_order(summed, range(len(owned)), _pass_workers())) as results:
            for group_sums, group_counts, missed, train in results:
                signals.check()  # Ctrl-C acts between row groups, not after the whole pass
                sums += group_sums
                counts += group_counts
                dropped += missed
                train_rows.append(train)
                if missed and missing == "error":
                    break  # said once every rank has its sums, the same on every rank
    finally:
        for files_ in opened:
            files_.close()
    return sums, counts, dropped, train_rows


def _group_sums(arrays, parts: np.ndarray, shift: np.ndarray) -> tuple:
    """One row group's (sums, counts, missing rows, training rows) for _pass_sums."""
    width = len(arrays) + 1
    d = width - 2
    sums, counts, dropped, train = np.zeros((3, width, width)), np.zeros(3), 0, 0
    # Column-major slices (each column's values contiguous), float64 a slice at a time:
    # [x - shift, 1, y - shift]' of the slice's rows; its products are BLAS's.
    for lo in range(0, len(parts), _GRAM_ROWS):
        hi = min(lo + _GRAM_ROWS, len(parts))
        block = np.empty((width, hi - lo))
        for j, column in enumerate(arrays[:d]):
            np.subtract(column[lo:hi], shift[j], out=block[j], dtype=np.float64)
        block[d] = 1.0
        np.subtract(arrays[d][lo:hi], shift[d], out=block[d + 1], dtype=np.float64)
        finite = np.isfinite(block).all(axis=0)
        dropped += int(hi - lo - finite.sum())
        kept = np.where(finite, parts[lo:hi], -1)
        for part in (TRAIN, VAL, TEST):
            rows = block if (kept == part).all() else block[:, kept == part]
            if rows.shape[1]:
                sums[part] += rows @ rows.T
                counts[part] += rows.shape[1]
        train += int((kept == TRAIN).sum())
    return sums, counts, dropped, train


def _first_means(arrays) -> np.ndarray:
    """Each column's mean over its first 1000 finite values of a row group (0 for none)."""
    first_rows = np.stack([c[:1000].astype(np.float64) for c in arrays], axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN only
        first_rows = np.where(np.isfinite(first_rows), first_rows, np.nan)
        return np.nan_to_num(np.nanmean(first_rows, axis=0))


def load_streamed(
    parquet,
    columns: list[str],
    missing: str,
    fractions: SplitFractions,
    scaled: np.ndarray,
    source: TableSource,
    window: int,
    hold_budget: int | None = None,
) -> StreamedTable:
    """One pass over parquet (tables._ParquetColumns) gathering each part's sums, then the
    standardization and least-squares optimum they give; see the module's notes.

    In a world of ranks (a job's SLURM tasks or torchrun's processes, joined before its data
    is loaded: distributed.joined), the pass is split: each rank reads the row groups _owners
    gives it by their rows, all centred by rank 0's shift (its first group is the table's
    first), and the sums are added once over the ranks in rank order (float64): the single
    process's sums, in another order of additions. hold_budget: in such a world, the bytes
    a rank may hold (the least of the ranks' budgets): the table holds (StreamedTable.hold)
    if the largest rank's share fits it."""
    from linreg_lab.engines import distributed

    where = f"dataset.path={source.path}"
    groups, first = [], 0
    for f, footer in enumerate(parquet.metadata):
        for g in range(footer.num_row_groups):
            groups.append((f, g, first))
            first += footer.row_group(g).num_rows
    files = tuple(str(path) for path in parquet.paths)
    metadata = tuple(parquet.metadata)
    width = len(columns) + 1  # [x, 1, y]: the ones column before the target
    d = len(columns) - 1
    rank, size = distributed.joined_rank()
    sizes = np.array([metadata[f].row_group(g).num_rows for f, g, _ in groups], np.int64)
    mine = [i for i, owner in enumerate(_owners(sizes, size)) if owner == rank]
    if size > 1:
        log.info("dataset: the first pass's %d of %d row groups on rank %d of %d", len(mine),
                 len(groups), rank, size)  # fmt: skip
    owned = [groups[i] for i in mine]
    held = []  # the first group's columns, read here for the shift; summed (and let go) there
    if rank == 0 and owned:
        with RowGroups(files, metadata) as first_file:
            held.append(_as_arrays(first_file.read(owned[0][0], owned[0][1], columns)))
    # Every column centred by a first estimate of its mean, the target too: float64 keeps
    # digits. From the first 1000 rows of the table's first row group with rows: rank 0's.
    shift = _first_means(held[0]) if held else np.zeros(width - 1)
    if size > 1:
        shift = distributed.from_rank_0(shift)
        group = distributed.patient_group()  # every rank is alive: they all sent or received
    # Each part's sums, then per part its rows, then: rows with a missing value, and each row
    # group's training rows (a rank's own groups; zero for the others').
    sums, counts, dropped, train_rows = _pass_sums(files, metadata, columns, owned, fractions,
                                                   missing, shift, held)  # fmt: skip
    tallies = np.zeros(1 + len(groups))
    tallies[0] = dropped
    for i, rows in zip(mine, train_rows):
        tallies[1 + i] = rows
    if size > 1:  # one reduction of every rank's sums: (3 x width^2 + 3 + 1 + groups) values
        together = distributed.sum_over_ranks(np.concatenate([sums.ravel(), counts, tallies]),
                                               group)  # fmt: skip
        sums = together[: sums.size].reshape(sums.shape)
        counts, tallies = together[sums.size : sums.size + 3], together[sums.size + 3 :]
    dropped, group_rows = int(tallies[0]), tuple(int(n) for n in tallies[1:])
    hold = hold_budget is not None and size > 1 and _share_fits(group_rows, len(columns), size,
                                                                 hold_budget)  # fmt: skip
    if dropped and missing == "error":
        raise DataError(
            f"{where}: rows with NaN, inf or empty values (at least {dropped}); set "
            "dataset.missing=drop to train without them"
        )
    if dropped:
        if dropped == first:
            raise DataError(f"{where}: every row has a missing value ({dropped} dropped)")
        log.warning("dataset: dropped %d of %d rows with NaN, inf or empty values", dropped, first)
    train = sums[TRAIN]  # the ones column's row holds each column's sum, the diagonal squares
    offset, scale, scaling = standardization(
        int(counts[TRAIN]), np.r_[train[d, :d], train[d, d + 1]],
        np.r_[np.diag(train)[:d], train[d + 1, d + 1]], shift, scaled, columns,
    )  # fmt: skip
    # [x - shift, 1, y - shift] T = [(x - center) / scale, 1, (y - center) / scale]
    transform = np.zeros((width, width))
    for j in range(d):
        transform[j, j], transform[d, j] = 1 / scale[j], -offset[j] / scale[j]
    transform[d, d] = 1.0
    transform[d + 1, d + 1], transform[d, d + 1] = 1 / scale[d], -offset[d] / scale[d]

    def solved(part: int) -> LeastSquares | None:
        if not counts[part]:
            return None
        n = int(counts[part])
        # The optimum's loss from the centred sums (standardizing changes the features by an
        # invertible map and the target by an affine one: the residuals only scale by 1 / its
        # scale); from the standardized sums, an unscaled target's y'y would cancel its digits.
        centred = from_sums(torch.from_numpy(sums[part].copy()), n).loss
        standardized = transform.T @ sums[part] @ transform
        return from_sums(torch.from_numpy(standardized), n, loss=centred / scale[d] ** 2)

    return StreamedTable(
        files, metadata, tuple(groups), tuple(group_rows), tuple(columns), fractions, missing,
        scaling, solved(TRAIN), solved(VAL), solved(TEST), source,
        (int(counts[VAL]), int(counts[TEST])), dropped, int(window), hold,
    )  # fmt: skip
