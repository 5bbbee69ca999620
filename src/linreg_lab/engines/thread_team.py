"""The compiled SGD loop on several threads at once, each summing its share of every batch.

The threads start once per call and meet at a barrier after each batch (~1 us), not in a
parallel region forked and joined per batch (~5 us, and each thread's prefetching starts cold):
at N 10^7, D 100, batch 1000 an epoch takes ~6% less. Each call starts threads of its own
(~0.3 ms; a call is an epoch, or up to ~0.1 s of work on long ones) that run the compiled loop
(it releases the GIL): each share has a thread of its own, whatever numba's threading layer or
another caller is doing (shares waiting in a shared pool's queue would wait for each other
forever), no thread outlives the call, and a forked child has nothing stale to reuse.
"""

from __future__ import annotations

import threading

import numpy as np

_LINE_FLOATS = 16  # float32 values in a 64-byte cache line


def sgd_steps_on_threads(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, dampening, weight_decay, nesterov, threads,
):  # fmt: skip
    """sgd_kernels.sgd_steps with each batch's rows split between threads threads (this one
    included); the same arguments, the last the thread count. Returns (last loss, has_buf)."""
    from linreg_lab.engines.kernels import sgd_steps_share

    d = theta.shape[0] - 1
    # Each thread's share on cache lines of its own, a line apart: rows that shared a line at
    # their boundary bounced it between the cores on every row (~0.25 s an epoch at N 10^7).
    stride = -(-(d + 2) // _LINE_FLOATS) * _LINE_FLOATS + _LINE_FLOATS
    shares = np.zeros((2, threads, stride), np.float32)
    arrivals = np.zeros(2, np.int64)  # [threads arrived at barriers so far, a thread failed]
    hyper = (lr, momentum, dampening, weight_decay, nesterov)
    results: list = [None] * threads
    errors: list[BaseException] = []

    def run_share(thread: int, theta: np.ndarray, buf: np.ndarray) -> None:
        try:
            results[thread] = sgd_steps_share(
                X, y, order, begin, end, batch_size, theta, buf, has_buf, *hyper,
                thread, threads, shares, arrivals,
            )  # fmt: skip
        except BaseException as error:
            arrivals[1] = 1  # the others stop waiting for this thread
            errors.append(error)

    others = []
    try:
        # Each other thread updates copies of theta and buf, equal to these at every step.
        for thread in range(1, threads):
            other = threading.Thread(
                target=run_share, args=(thread, theta.copy(), buf.copy()), name="linreg-sgd"
            )
            other.start()
            others.append(other)
        run_share(0, theta, buf)
    except BaseException:
        arrivals[1] = 1  # started threads must not wait for one that never comes
        raise
    finally:
        for other in others:
            other.join()
    if errors:
        raise errors[0]
    return results[0]
