"""Item: streamed Parquet tables (dataset.stream=true): peak memory and epoch time.

    python -m bench.streamed run PATH BATCH STREAM   # one process: load (the statistics
                                                     # pass), one epoch; time and peak memory

Each table (bench.table.make: N x D float32 features and a target, a million rows per row
group) is trained streamed in a fresh process, so each peak is its own; the first size is also
trained in memory (stream=false) for the epoch's ratio. The file is in the page cache by then
(it was just written or read), as the goal says.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(path: str, batch_size: int, stream: bool) -> dict:
    import torch

    from bench.large import LR, peak_rss_bytes, rss_bytes
    from bench.table import make
    from linreg_lab.engines import fit
    from linreg_lab.engines.settings import TrainerSettings
    from linreg_lab.model import init_linear
    from linreg_lab.tables import load_table

    split = {"val": 0.0, "test": 0.0, "seed": 0}
    settings = TrainerSettings(batch_size=batch_size, epochs=1)
    sgd = functools.partial(torch.optim.SGD, lr=LR)

    def epoch(data) -> float:
        model = init_linear(torch.nn.Linear(data.num_features, 1))
        start = time.perf_counter()
        fit(model, sgd, data, settings, lambda *_: None)
        return time.perf_counter() - start

    # The compiled steps (and their first call's signature) loaded before the clock starts.
    epoch(load_table(str(make(20_000, 4)), "y", split=split, stream=stream))
    baseline = rss_bytes()
    start = time.perf_counter()
    data = load_table(path, "y", split=split, stream=stream)
    load_s = time.perf_counter() - start
    d = data.num_features
    torch.set_num_threads(settings.num_threads(data.num_samples, d))
    epoch_s = epoch(data)
    return {"N": data.num_samples, "D": d, "batch": batch_size, "streamed": data.streamed,
            "load_s": load_s, "epoch_s": epoch_s, "peak_rss_bytes": peak_rss_bytes(),
            "peak_above_baseline_bytes": peak_rss_bytes() - baseline,
            "data_bytes": data.num_samples * (d + 1) * 4}  # fmt: skip


def measure(shapes: list[tuple[int, int]], batch_size: int = 1000) -> list[dict]:
    """One row per shape, streamed; the first shape's row has the in-memory epoch too."""
    from bench.table import make

    def step(path: Path, stream: bool) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "bench.streamed", "run", str(path), str(batch_size),
             str(stream).lower()], cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    rows = []
    for index, (n, d) in enumerate(shapes):
        path = make(n, d)
        row = step(path, True)
        if index == 0:
            memory = step(path, False)
            row["memory_epoch_s"] = memory["epoch_s"]
            row["epoch_over_memory"] = row["epoch_s"] / memory["epoch_s"]
        rows.append(row)
    first = rows[0]["peak_above_baseline_bytes"]
    for row in rows:
        row["peak_over_first"] = row["peak_above_baseline_bytes"] / max(first, 1)
    return rows


if __name__ == "__main__":
    verb, path, batch, stream = sys.argv[1:]
    print(json.dumps(run(path, int(batch), stream == "true")))
