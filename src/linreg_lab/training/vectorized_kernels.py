"""The vectorized engine's compiled loop: K models, one read of each sampled row.

Same arithmetic as sgd_kernels.sgd_steps (float32, torch.optim.SGD's update), per model row of
theta (K, D + 1), with per-model settings as arrays. Each model's weights are contiguous, so its
dot product and gradient update vectorise over the D features (2x faster than looping over the
models innermost, at D 100 and K 16). Models never mix: threads can take disjoint sets of them.
As there, D comes from theta: X may hold the targets too, packed beside the features.
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
    d = theta.shape[1] - 1
    grad = np.empty((stop_model - first, d + 1), np.float32)
    squares = np.empty(stop_model - first, np.float32)
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        grad[:] = 0
        squares[:] = 0
        s = start
        while s < stop:
            for a in range(s + _AHEAD, min(s + _AHEAD + 4, end)):
                prefetch_row(X, order[a])
                prefetch_row(y, order[a])
            if s + 4 <= stop:
                _add_four_rows(X, y, order, s, theta, grad, squares, first, stop_model)
                s += 4
            else:
                _add_row(X, y, order[s], theta, grad, squares, first, stop_model)
                s += 1
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


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _add_four_rows(X, y, order, s, theta, grad, squares, first, stop_model):
    """Add rows order[s:s + 4]' gradients and squared residuals to each model's grad, squares.

    Each weight is loaded once for the four rows' dot products, and each gradient entry once
    for their four updates (1.6x at N 10^6, D 100, K 16).
    """
    d = theta.shape[1] - 1
    x1, x2, x3, x4 = X[order[s]], X[order[s + 1]], X[order[s + 2]], X[order[s + 3]]
    t1, t2, t3, t4 = y[order[s]], y[order[s + 1]], y[order[s + 2]], y[order[s + 3]]
    for m in range(first, stop_model):
        w = theta[m]
        r1, r2, r3, r4 = w[d] - t1, w[d] - t2, w[d] - t3, w[d] - t4
        for j in range(d):
            r1 += x1[j] * w[j]
            r2 += x2[j] * w[j]
            r3 += x3[j] * w[j]
            r4 += x4[j] * w[j]
        g = grad[m - first]
        for j in range(d):
            g[j] += r1 * x1[j] + r2 * x2[j] + r3 * x3[j] + r4 * x4[j]
        g[d] += r1 + r2 + r3 + r4
        squares[m - first] += r1 * r1 + r2 * r2 + r3 * r3 + r4 * r4


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _add_row(X, y, row, theta, grad, squares, first, stop_model):
    """_add_four_rows for the one row X[row]."""
    d = theta.shape[1] - 1
    x = X[row]
    target = y[row]
    for m in range(first, stop_model):
        w = theta[m]
        residual = w[d] - target
        for j in range(d):
            residual += x[j] * w[j]
        g = grad[m - first]
        for j in range(d):
            g[j] += residual * x[j]
        g[d] += residual
        squares[m - first] += residual * residual


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
