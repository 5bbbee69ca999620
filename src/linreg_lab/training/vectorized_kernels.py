"""The vectorized engine's compiled loop: K models, one read of each sampled row.

Same arithmetic as sgd_kernels.sgd_steps (float32, torch.optim.SGD's update), per model row of
theta (K, D + 1), with per-model settings as arrays. Each model's weights are contiguous, so its
dot product and gradient update vectorise over the D features (2x faster than looping over the
models innermost, at D 100 and K 16). Models never mix: threads can take disjoint sets of them.
"""

import numba
import numpy as np

from linreg_lab.training.prefetch import prefetch_row

_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # as sgd_kernels: no finite-math flags
# Rows are requested this many samples ahead: each sample's work (K dot products) is long, so a
# few loads in flight cover a memory latency (~2x at N 10^6, D 100, K 4 to 8; 1.3x at K 16).
_AHEAD = 8


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _steps_models(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, keep, weight_decay, nesterov, last_loss, first, stop_model,
):  # fmt: skip
    """sgd_steps_many for the models first..stop_model - 1 only."""
    d = X.shape[1]
    grad = np.empty((stop_model - first, d + 1), np.float32)
    squares = np.empty(stop_model - first, np.float32)
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        grad[:] = 0
        squares[:] = 0
        for s in range(start, stop):
            if s + _AHEAD < end:
                prefetch_row(X, order[s + _AHEAD])
                prefetch_row(y, order[s + _AHEAD])
            row = order[s]
            x = X[row]
            target = y[row]
            for m in range(first, stop_model):
                w = theta[m]
                residual = w[d] - target
                for j in range(d):
                    residual += x[j] * w[j]
                g = grad[m - first]
                squares[m - first] += residual * residual
                for j in range(d):
                    g[j] += residual * x[j]
                g[d] += residual
        count = stop - start
        scale = np.float32(2.0 / count)
        for m in range(first, stop_model):
            g_m, w, b = grad[m - first], theta[m], buf[m]
            for j in range(d + 1):
                g = g_m[j] * scale + weight_decay[m] * w[j]
                if momentum[m] != 0:
                    b[j] = momentum[m] * b[j] + keep[m] * g if has_buf else g
                    g = g + momentum[m] * b[j] if nesterov[m] else b[j]
                w[j] -= lr[m] * g
            last_loss[m] = squares[m - first] / count
        has_buf = True
    return has_buf


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def sgd_steps_many(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, keep, weight_decay, nesterov, last_loss,
):  # fmt: skip
    """Run the batches of order[begin:end] for every model; last_loss gets each one's MSE.

    theta and buf are (K, D + 1); keep = 1 - dampening; nesterov is a bool array.
    Returns has_buf.
    """
    return _steps_models(
        X, y, order, begin, end, batch_size, theta, buf, has_buf,
        lr, momentum, keep, weight_decay, nesterov, last_loss, 0, theta.shape[0],
    )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, parallel=True)
def sgd_steps_many_parallel(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, keep, weight_decay, nesterov, last_loss, threads,
):  # fmt: skip
    """sgd_steps_many with the models split between threads; each thread reads every row."""
    k_models = theta.shape[0]
    for t in numba.prange(threads):
        _steps_models(
            X, y, order, begin, end, batch_size, theta, buf, has_buf,
            lr, momentum, keep, weight_decay, nesterov, last_loss,
            t * k_models // threads, (t + 1) * k_models // threads,
        )  # fmt: skip
    return has_buf or end > begin
