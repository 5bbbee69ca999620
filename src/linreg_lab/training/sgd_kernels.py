"""Compiled minibatch SGD for y_hat = X w + b under MSE: the analytic gradient, no autograd.

The update follows torch.optim.SGD to the letter: g = grad + weight_decay * p; with momentum,
buf = g on the first step, then buf = momentum * buf + (1 - dampening) * g; the step uses
g + momentum * buf (nesterov) or buf; p -= lr * step. theta packs [w_0 .. w_{D-1}, b].
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=False)
def sgd_steps(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, dampening, weight_decay, nesterov,
):  # fmt: skip
    """Run the batches of order[begin:end]; returns (last batch loss, has_buf)."""
    d = X.shape[1]
    grad = np.empty(d + 1, np.float32)
    last_loss = np.nan
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        grad[:] = 0.0
        squares = 0.0
        bias = theta[d]
        for k in range(start, stop):
            row = order[k]
            residual = bias - y[row]
            for j in range(d):
                residual += X[row, j] * theta[j]
            squares += residual * residual
            for j in range(d):
                grad[j] += residual * X[row, j]
            grad[d] += residual
        count = stop - start
        last_loss = squares / count
        scale = np.float32(2.0 / count)
        for j in range(d + 1):
            g = grad[j] * scale + weight_decay * theta[j]
            if momentum != 0.0:
                buf[j] = momentum * buf[j] + (1.0 - dampening) * g if has_buf else g
                g = g + momentum * buf[j] if nesterov else buf[j]
            theta[j] -= lr * g
        has_buf = True
    return last_loss, has_buf
