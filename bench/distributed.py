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


if __name__ == "__main__":
    verb, n, d, batch, processes, threads, compiled = sys.argv[1:]
    print(json.dumps(run(int(n), int(d), int(batch), int(processes), int(threads), compiled)))
