"""Item: data-parallel jobs (trainer.processes): an epoch on ranks against one process.

    python -m bench.distributed run N D BATCH PROCESSES THREADS   # one job, 3 epochs: the
                                                                  # second epoch's time

Each job runs in a fresh process on synthetic data (N x D float32). The epoch is timed from
the end of the first epoch to the end of the second, so the ranks' start (spawning them,
their imports, the rendezvous) is not in it; it is reported apart (start_s). A third epoch
follows so that the second is a middle one: on ranks, the next epoch's order is drawn while
an epoch trains (engines.ahead.Ahead), and the last epoch has none to draw. Rows:
- the goal's: N 10^7 x D 100 at a global batch of 10^5, 2 ranks x 1 thread against 1 rank x
  2 threads (the engine's default path: the compiled loop on both cores);
- the cost of a step's reduction: a small table (it stays in cache) at batch 10, 2 ranks x 1
  thread against 1 rank x 1 thread on the BLAS path (the ranks' own step): the difference per
  step is the reduction of D + 2 values (an all_gather) and the ranks' meeting.

Item "held" (measure_held): a Parquet table (bench.table.make) trained by 2 torchrun ranks,
    python -m torch.distributed.run --nproc-per-node=2 -m bench.distributed world PATH BATCH
        STREAM BUDGET_GB
streamed (dataset.stream=true: every epoch reads and packs the rank's row groups), held
(stream=auto under a budget the table is over and each rank's half is not: the rank's rows
kept from the first epoch on) and loaded whole by every rank (stream=false); the second of
three epochs, timed on rank 0.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(n: int, d: int, batch: int, processes: int, threads: int, compiled: str) -> dict:
    import torch

    from bench.large import LR
    from linreg_lab.data import make_synthetic_regression
    from linreg_lab.engines import fit
    from linreg_lab.engines.settings import TrainerSettings
    from linreg_lab.model import init_linear

    data = make_synthetic_regression(true_w=None, num_features=d, num_samples=n, seed=0)
    torch.set_num_threads(threads)
    settings = TrainerSettings(batch_size=batch, epochs=3, processes=processes,
                               compiled=compiled)  # fmt: skip
    model = init_linear(torch.nn.Linear(d, 1))
    ends: list[float] = []
    start = time.perf_counter()
    fit(model, functools.partial(torch.optim.SGD, lr=LR), data, settings,
        lambda *_: ends.append(time.perf_counter()))  # fmt: skip
    epoch_s = ends[1] - ends[0]
    steps = -(-n // batch)
    return {"N": n, "D": d, "batch": batch, "processes": processes, "threads": threads,
            "compiled": compiled, "epoch_s": epoch_s, "step_ms": 1e3 * epoch_s / steps,
            "start_s": ends[0] - start - epoch_s}  # fmt: skip


def measure(goal_shape: tuple[int, int], small_shape: tuple[int, int]) -> list[dict]:
    def job(n, d, batch, processes, threads, compiled="auto") -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "bench.distributed", "run", str(n), str(d), str(batch),
             str(processes), str(threads), compiled], cwd=ROOT, check=True,
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    n, d = goal_shape
    one = job(n, d, 100_000, 1, 2)
    two = job(n, d, 100_000, 2, 2)
    two["over_one"] = two["epoch_s"] / one["epoch_s"]
    n, d = small_shape
    alone = job(n, d, 10, 1, 1, "false")
    pair = job(n, d, 10, 2, 2)
    pair["over_one"] = pair["epoch_s"] / alone["epoch_s"]
    pair["reduction_ms"] = pair["step_ms"] - alone["step_ms"] / 2
    return [{**one, "case": "goal"}, {**two, "case": "goal"}, {**alone, "case": "latency"},
            {**pair, "case": "latency"}]  # fmt: skip


def world(path: str, batch: int, stream: str, budget_gb: float) -> dict | None:
    """Rank 0's row (None on the others) of one job of a torchrun world, as linreg-train
    trains one: the world joined before the table is loaded."""
    import torch

    from bench.large import LR, peak_rss_bytes
    from linreg_lab.engines import fit
    from linreg_lab.engines.distributed import joined, world_from_environment
    from linreg_lab.engines.settings import TrainerSettings
    from linreg_lab.model import init_linear
    from linreg_lab.tables import load_table

    ranks = world_from_environment()
    ends: list[float] = []
    with joined(ranks):
        stream_ = {"true": True, "false": False}.get(stream, stream)
        data = load_table(path, "y", split={"val": 0.0, "test": 0.0, "seed": 0}, stream=stream_,
                          memory_budget_gb=budget_gb)  # fmt: skip
        settings = TrainerSettings(batch_size=batch, epochs=3)
        torch.manual_seed(0)
        model = init_linear(torch.nn.Linear(data.num_features, 1))
        fit(model, functools.partial(torch.optim.SGD, lr=LR), data, settings,
            lambda *_: ends.append(time.perf_counter()), world=ranks)  # fmt: skip
    if ranks is None or ranks.rank > 0:
        return None
    return {"N": data.num_samples, "D": data.num_features, "batch": batch, "stream": stream,
            "streamed": data.streamed, "held": bool(getattr(data, "hold", False)),
            "epoch_s": ends[1] - ends[0], "peak_rss_bytes": peak_rss_bytes()}  # fmt: skip


def measure_held(shape: tuple[int, int], batch_size: int = 100_000) -> list[dict]:
    """The held share against streaming it and loading it whole, 2 torchrun ranks each."""
    from bench.table import make

    n, d = shape
    path = make(n, d)
    budget_gb = 0.75 * n * (d + 1) * 4 / 2**30  # the table is over it, each rank's half not

    def job(stream: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m",
             "bench.distributed", "world", str(path), str(batch_size), stream, str(budget_gb)],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    rows = [{**job(stream), "case": case} for case, stream in
            (("streamed", "true"), ("held", "auto"), ("in memory", "false"))]  # fmt: skip
    assert rows[1]["held"] and rows[0]["streamed"] and not rows[0]["held"], rows
    for row in rows:
        row["over_memory"] = row["epoch_s"] / rows[2]["epoch_s"]
    return rows


if __name__ == "__main__":
    if sys.argv[1] == "world":
        path, batch, stream, budget = sys.argv[2:]
        row = world(path, int(batch), stream, float(budget))
        if row is not None:
            print(json.dumps(row))
        sys.exit(0)
    verb, n, d, batch, processes, threads, compiled = sys.argv[1:]
    print(json.dumps(run(int(n), int(d), int(batch), int(processes), int(threads), compiled)))
