"""The vectorized engine's compiled loop: K models, one read of each sampled row.

Same arithmetic as sgd_kernels.sgd_steps (float32, torch.optim.SGD's update), per model
column of theta (D + 1, K), with per-model settings as arrays. The innermost loops run over
the K models, contiguous in memory, so they vectorise.
"""

import numba
import numpy as np

_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # as sgd_kernels: no finite-math flags


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def sgd_steps_many(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, keep, weight_decay, nesterov, last_loss,
):  # fmt: skip
    """Run the batches of order[begin:end] for every column; last_loss gets each one's MSE.

    keep = 1 - dampening; nesterov is a bool array. Returns has_buf.
    """
    d = X.shape[1]
    k_models = theta.shape[1]
    grad = np.empty((d + 1, k_models), np.float32)
    residual = np.empty(k_models, np.float32)
    squares = np.empty(k_models, np.float32)
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        grad[:] = 0
        squares[:] = 0
        for s in range(start, stop):
            row = order[s]
            x = X[row]
            for k in range(k_models):
                residual[k] = theta[d, k] - y[row]
            for j in range(d):
                for k in range(k_models):
                    residual[k] += x[j] * theta[j, k]
            for k in range(k_models):
                squares[k] += residual[k] * residual[k]
            for j in range(d):
                for k in range(k_models):
                    grad[j, k] += residual[k] * x[j]
            for k in range(k_models):
                grad[d, k] += residual[k]
        count = stop - start
        scale = np.float32(2.0 / count)
        for j in range(d + 1):
            for k in range(k_models):
                g = grad[j, k] * scale + weight_decay[k] * theta[j, k]
                if momentum[k] != 0:
                    buf[j, k] = momentum[k] * buf[j, k] + keep[k] * g if has_buf else g
                    g = g + momentum[k] * buf[j, k] if nesterov[k] else buf[j, k]
                theta[j, k] -= lr[k] * g
        for k in range(k_models):
            last_loss[k] = squares[k] / count
        has_buf = True
    return has_buf
