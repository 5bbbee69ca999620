"""Item 2: one epoch at large N (D 100, batch 1000), run in its own process for a clean peak RSS.

    python -m bench.large N D BATCH   # prints one JSON object

Order: make the data; then rounds of (read the data once at full speed, train one epoch with
linreg_lab), so the best read and the best epoch come from the same stretch of this shared
machine's time; peak memory is read then, before anything else allocates; then time the
reference loop on a bounded number of steps and extrapolate to the epoch.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import time

import numba
import numpy as np
import torch

from bench.reference import tutorial_fit
from linreg_lab.data import make_synthetic_regression, packed_rows
from linreg_lab.engines import fit
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.model import init_linear

LR = 0.003  # stable at D 100 (see bench.throughput.lr_for)
REFERENCE_STEPS = 150
# The VM's cores and memory are shared: a round's read and epoch each vary by up to +-25%.
ROUNDS = 5


@numba.njit(nogil=True, fastmath={"reassoc", "contract"})
def _stream_sum(X):
    total = np.float32(0)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            total += X[i, j]
    return total


def read_bandwidth(X: torch.Tensor, y: torch.Tensor) -> float:
    """Bytes/s of the faster of two sequential reads of the data's memory (the packed [X y]
    rows, or X): one compiled pass, and torch.sum's threads."""
    rows = packed_rows(X, y)
    array = rows if rows is not None else X.numpy()
    _stream_sum(array[:2])
    best = float("inf")
    for read in (lambda: _stream_sum(array), lambda: torch.from_numpy(array).sum()):
        start = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - start)
    return array.nbytes / best


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def one_epoch(num_samples: int, num_features: int, batch_size: int) -> dict:
    baseline = rss_bytes()  # the interpreter, torch and numba, before any data
    data = make_synthetic_regression(num_samples=num_samples, num_features=num_features)
    data_bytes = sum(t.numel() * t.element_size() for t in (data.X, data.y))
    settings = TrainerSettings(batch_size=batch_size, epochs=1)
    torch.set_num_threads(settings.num_threads(num_samples, num_features))
    sgd = functools.partial(torch.optim.SGD, lr=LR)
    # Warm-up on a slice: loads the compiled kernel, as every later run finds it cached.
    small = make_synthetic_regression(num_samples=2000, num_features=num_features)
    fit(init_linear(torch.nn.Linear(num_features, 1)), sgd, small, settings, lambda *_: None)

    seconds, bandwidth = float("inf"), 0.0
    for _ in range(ROUNDS):
        bandwidth = max(bandwidth, read_bandwidth(data.X, data.y))
        model = init_linear(torch.nn.Linear(num_features, 1))
        start = time.perf_counter()
        fit(model, sgd, data, settings, lambda *_: None)
        seconds = min(seconds, time.perf_counter() - start)
    peak = peak_rss_bytes()

    ref = tutorial_fit(data.X, data.y, batch_size, LR, num_epochs=1, max_steps=REFERENCE_STEPS)
    x_bytes = data.X.numel() * data.X.element_size()
    return {
        "N": num_samples, "D": num_features, "batch": batch_size,
        "threads": torch.get_num_threads(),
        "ours_epoch_s": seconds, "ours_samples_per_s": num_samples / seconds,
        "x_bytes_read_per_s": x_bytes / seconds, "read_bandwidth_bytes_per_s": bandwidth,
        "fraction_of_bandwidth": x_bytes / seconds / bandwidth,
        "data_bytes": data_bytes, "peak_rss_bytes": peak, "peak_over_data": peak / data_bytes,
        "baseline_rss_bytes": baseline,
        "peak_above_baseline_over_data": (peak - baseline) / data_bytes,
        "reference_epoch_s": ref.seconds, "reference_extrapolated_from_steps": ref.steps_run,
        "x_reference": ref.seconds / seconds,
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(one_epoch(*(int(a) for a in sys.argv[1:4]))))
