"""Item: a large Parquet table (N rows x D float32 features and a target), loaded and trained.

    python -m bench.table make N D        # writes the file once (cached beside the results)
    python -m bench.table read PATH       # pyarrow.parquet.read_table alone, once: JSON
    python -m bench.table load PATH BATCH # linreg_lab.tables.load_table: time, peak memory,
                                          # then one epoch on it against synthetic data

Each measurement runs in its own process, so each peak memory is that step's own; reads and
loads alternate, 3 of each, and the medians are compared. Loading is
compared with read_table on the same file (the issue's bound: 2x), peak memory with the data
(N x (D + 1) float32; bound 2.5x), the epoch with one on synthetic data of the same shape.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / "results" / "cache"
ROUNDS = 3


def path_for(n: int, d: int) -> Path:
    return CACHE / f"table-{n}x{d}.parquet"


def make(n: int, d: int) -> Path:
    """A seeded table: y = X w + 3 + noise, written a million rows per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = path_for(n, d)
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, d).astype(np.float32)
    names = [f"x{j}" for j in range(d)] + ["y"]
    partial = path.with_suffix(".partial")
    with pq.ParquetWriter(partial, pa.schema([(c, pa.float32()) for c in names])) as writer:
        for start in range(0, n, 1_000_000):
            rows = min(1_000_000, n - start)
            X = rng.standard_normal((rows, d), dtype=np.float32)
            y = X @ w + np.float32(3) + rng.normal(0, 0.01, rows).astype(np.float32)
            columns = [pa.array(X[:, j]) for j in range(d)] + [pa.array(y)]
            writer.write_table(pa.Table.from_arrays(columns, names=names))
    partial.rename(path)
    return path


def read(path: str) -> dict:
    """read_table once in this fresh process, as a user's script would (a second read in the
    same process reuses the first one's memory, which a first load cannot)."""
    import pyarrow.parquet as pq

    start = time.perf_counter()
    table = pq.read_table(path)
    seconds = time.perf_counter() - start
    del table
    return {"read_table_s": seconds}


def load(path: str, batch_size: int) -> dict:
    import torch

    from bench.large import LR, peak_rss_bytes, rss_bytes
    from linreg_lab.data import make_synthetic_regression
    from linreg_lab.engines import fit
    from linreg_lab.engines.settings import TrainerSettings
    from linreg_lab.model import init_linear
    from linreg_lab.tables import load_table

    warm = make(20_000, 4)  # compiles (or loads) the packing kernels before the clock starts
    load_table(str(warm), "y")
    baseline = rss_bytes()
    start = time.perf_counter()
    data = load_table(path, "y")
    load_s = time.perf_counter() - start
    peak = peak_rss_bytes()
    n = data.num_samples + data.split.X_val.shape[0] + data.split.X_test.shape[0]
    d = data.num_features
    data_bytes = n * (d + 1) * 4
    settings = TrainerSettings(batch_size=batch_size, epochs=1)
    torch.set_num_threads(settings.num_threads(data.num_samples, d))
    sgd = functools.partial(torch.optim.SGD, lr=LR)

    def epoch(on) -> float:
        best = float("inf")
        for _ in range(ROUNDS):
            model = init_linear(torch.nn.Linear(d, 1))
            start = time.perf_counter()
            fit(model, sgd, on, settings, lambda *_: None)
            best = min(best, time.perf_counter() - start)
        return best

    table_epoch = epoch(data)
    del data
    synthetic = make_synthetic_regression(num_samples=int(0.8 * n), num_features=d)
    synthetic_epoch = epoch(synthetic)
    return {
        "N": n, "D": d, "batch": batch_size, "load_s": load_s, "data_bytes": data_bytes,
        "peak_above_baseline_over_data": (peak - baseline) / data_bytes,
        "table_epoch_s": table_epoch, "synthetic_epoch_s": synthetic_epoch,
        "epoch_over_synthetic": table_epoch / synthetic_epoch,
    }  # fmt: skip


def measure(shapes: list[tuple[int, int]], batch_size: int = 1000) -> list[dict]:
    """One row per shape: each step in a fresh process."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    rows = []
    for n, d in shapes:

        def step(*args: str) -> dict:
            out = subprocess.run([sys.executable, "-m", "bench.table", *args], cwd=root,
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            return json.loads(out.strip().splitlines()[-1])

        path = str(make(n, d))
        reads, loads = [], []
        for _ in range(ROUNDS):  # alternated: this machine's speed drifts
            reads.append(step("read", path)["read_table_s"])
            loads.append(step("load", path, str(batch_size)))
        row = sorted(loads, key=lambda r: r["load_s"])[len(loads) // 2]  # the median load
        row["read_table_s"] = sorted(reads)[len(reads) // 2]
        row["read_table_all_s"], row["load_all_s"] = reads, [r["load_s"] for r in loads]
        row["load_over_read_table"] = row["load_s"] / row["read_table_s"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    if verb == "make":
        print(make(int(rest[0]), int(rest[1])))
    elif verb == "read":
        print(json.dumps(read(rest[0])))
    else:
        print(json.dumps(load(rest[0], int(rest[1]))))
