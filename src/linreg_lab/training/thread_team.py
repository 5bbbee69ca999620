"""The compiled SGD loop on several threads at once, each summing its share of every batch.

The threads start once per call and meet at a barrier after each batch (~1 us), not in a
parallel region forked and joined per batch (~5 us, and each thread's prefetching starts cold):
at N 10^7, D 100, batch 1000 an epoch takes ~10% less. Plain Python threads run the compiled
loop (it releases the GIL), so each share runs on a thread of its own whatever numba's
threading layer: two shares on one thread would wait for each other forever.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_LINE_FLOATS = 16  # float32 values in a 64-byte cache line
_workers: ThreadPoolExecutor | None = None
_workers_pid = 0  # the process that started them: a forked child inherits none of its threads


def sgd_steps_on_threads(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, dampening, weight_decay, nesterov, threads,
):  # fmt: skip
    """sgd_kernels.sgd_steps with each batch's rows split between threads threads (this one
    included); the same arguments, the last the thread count. Returns (last loss, has_buf)."""
    from linreg_lab.training.sgd_kernels import sgd_steps_share

    d = theta.shape[0] - 1
    # Each thread's share on cache lines of its own, a line apart: rows that shared a line at
    # their boundary bounced it between the cores on every row (~0.25 s an epoch at N 10^7).
    stride = -(-(d + 2) // _LINE_FLOATS) * _LINE_FLOATS + _LINE_FLOATS
    shares = np.zeros((2, threads, stride), np.float32)
    arrivals = np.zeros(2, np.int64)  # [threads arrived at barriers so far, a thread failed]
    hyper = (lr, momentum, dampening, weight_decay, nesterov)

    def run_share(thread: int, theta: np.ndarray, buf: np.ndarray):
        try:
            return sgd_steps_share(
                X, y, order, begin, end, batch_size, theta, buf, has_buf, *hyper,
                thread, threads, shares, arrivals,
            )  # fmt: skip
        except BaseException:
            arrivals[1] = 1  # the others stop waiting for this thread
            raise

    # Each other thread updates copies of theta and buf, equal to these at every step.
    others = [
        _pool(threads - 1).submit(run_share, thread, theta.copy(), buf.copy())
        for thread in range(1, threads)
    ]
    try:
        result = run_share(0, theta, buf)
    finally:
        for other in others:
            other.result()
    return result


def _pool(size: int) -> ThreadPoolExecutor:
    global _workers, _workers_pid
    if _workers is None or _workers_pid != os.getpid() or _workers._max_workers < size:
        if _workers is not None and _workers_pid == os.getpid():
            _workers.shutdown()
        _workers, _workers_pid = (
            ThreadPoolExecutor(size, thread_name_prefix="linreg-sgd"),
            os.getpid(),
        )
    return _workers
