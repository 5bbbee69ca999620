"""K linear models trained in one pass: same data, same batches, each its own SGD settings.

Column k of theta (D + 1, K) is model k's [w, b]. Each step reads a batch once and updates all
K models with two matrix products, following torch.optim.SGD per column (momentum,
dampening, nesterov, weight decay). A column that diverges turns NaN on its own: columns
never mix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from linreg_lab import signals
from linreg_lab.engines.analytic import (
    WORK_PER_CALL,
    SGDHyper,
    compiled_arrays,
    kernels,
    uses_blas,
)

# Multiply-adds per epoch from which the models are split between threads (a fraction of a
# second of work: starting the threads costs ~10 us a call).
_PARALLEL_MIN_EPOCH_WORK = 1 << 24
# on_epoch_end(epoch, last_batch_losses (K,), theta (D + 1, K))
GroupCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def train_vectorized(
    theta: torch.Tensor,
    hypers: Sequence[SGDHyper],
    X: torch.Tensor,
    y: torch.Tensor,
    orders: Iterable[torch.Tensor],
    batch_size: int,
    on_epoch_end: GroupCallback,
    epochs: int,
    compiled: str = "auto",
) -> None:
    """Train every column of theta (updated in place) over the batches of each order.

    On CPU a compiled loop (the per-step cost of torch calls would dominate small batches);
    on a GPU, or for runs too short to repay loading the compiler, two matrix products a step.
    """
    n, d = X.shape
    work = epochs * n * (d + 1) * theta.shape[1]
    if uses_blas(X.device, epochs * -(-n // batch_size), work, compiled):
        _train_blas(theta, hypers, X, y, orders, batch_size, on_epoch_end)
    else:
        _train_compiled(theta, hypers, X, y, orders, batch_size, on_epoch_end)


def per_model_settings(hypers: Sequence[SGDHyper]) -> tuple[np.ndarray, ...]:
    """(lr, momentum, 1 - dampening, weight_decay) as float32 arrays, nesterov as bools."""

    def values(name: str) -> np.ndarray:
        return np.array([getattr(h, name) for h in hypers], np.float32)

    keep = np.array([1.0 - h.dampening for h in hypers], np.float32)
    nesterov = np.array([h.nesterov for h in hypers], np.bool_)
    return values("lr"), values("momentum"), keep, values("weight_decay"), nesterov


def _train_compiled(theta, hypers, X, y, orders, batch_size: int, on_epoch_end) -> None:
    loops = kernels()
    n, d = X.shape
    k = theta.shape[1]
    rows = np.ascontiguousarray(theta.numpy().T)  # (K, D + 1): each model's weights contiguous
    X_np, y_np = compiled_arrays(X, y)

    lr, momentum, keep, weight_decay, nesterov = per_model_settings(hypers)
    buf = np.zeros_like(rows)
    last_loss = np.full(k, np.nan, np.float32)
    has_buf = False
    threads = _model_threads(k, n * (d + 1) * k)
    if threads > 1:
        loops.set_threads(threads)
        steps = functools.partial(loops.sgd_steps_many_parallel, threads=threads)
    else:
        steps = loops.sgd_steps_many
    # Whole batches per call, returning to Python often enough for Ctrl-C to act promptly.
    span = max(1, WORK_PER_CALL // ((d + 1) * k * batch_size)) * batch_size
    for epoch, order in enumerate(orders, start=1):
        order_np = order.numpy()
        for begin in range(0, n, span):
            signals.check()  # a stop request acts between calls
            has_buf = steps(
                X_np, y_np, order_np, begin, min(begin + span, n), batch_size,
                rows, buf, has_buf, lr, momentum, keep, weight_decay, nesterov, last_loss,
            )  # fmt: skip
        theta.copy_(torch.from_numpy(rows).T)
        on_epoch_end(epoch, torch.from_numpy(last_loss.copy()), theta)


def _model_threads(models: int, epoch_work: int) -> int:
    """Threads for the compiled loop: torch's count (trainer.threads) once an epoch is long
    enough to repay starting them, at most one per model."""
    if models < 2 or epoch_work < _PARALLEL_MIN_EPOCH_WORK:
        return 1
    return min(models, kernels().usable_threads(torch.get_num_threads()))


@torch.no_grad()
def _train_blas(
    theta: torch.Tensor,
    hypers: Sequence[SGDHyper],
    X: torch.Tensor,
    y: torch.Tensor,
    orders: Iterable[torch.Tensor],
    batch_size: int,
    on_epoch_end: GroupCallback,
) -> None:
    n, d = X.shape
    k = theta.shape[1]

    # Row vectors (1, K): each broadcasts over the D + 1 rows of its model's column.
    lr, momentum, keep, weight_decay, nesterov = (
        torch.from_numpy(values).to(theta.device).view(1, k)
        for values in per_model_settings(hypers)
    )
    has_momentum = momentum != 0
    uses_decay = bool((weight_decay != 0).any())
    uses_momentum = bool(has_momentum.any())

    rows = min(batch_size, n)
    # Reused buffers: fresh allocations are the slow part of a large gather on this VM.
    X_batch = torch.empty(rows, d, dtype=X.dtype, device=X.device)
    y_batch = torch.empty(rows, 1, dtype=X.dtype, device=X.device)
    residual = torch.empty(rows, k, dtype=X.dtype, device=X.device)
    grad = torch.empty_like(theta)
    buf: torch.Tensor | None = None
    y = y.view(-1, 1)
    for epoch, order in enumerate(orders, start=1):
        order = order.to(X.device)
        for start in range(0, n, batch_size):
            if start % 4096 < batch_size:
                signals.check()
            batch = order[start : start + batch_size]
            count = batch.shape[0]
            xb = torch.index_select(X, 0, batch, out=X_batch[:count])
            yb = torch.index_select(y, 0, batch, out=y_batch[:count])
            r = residual[:count]
            # r = X_b W + b - y_b, for all K models at once
            torch.addmm(theta[d:], xb, theta[:d], out=r).sub_(yb)
            torch.mm(xb.T, r, out=grad[:d])
            torch.sum(r, dim=0, keepdim=True, out=grad[d:])
            grad.mul_(2.0 / count)
            if uses_decay:
                grad.addcmul_(weight_decay, theta)
            step = grad
            if uses_momentum:
                if buf is None:
                    buf = grad.clone()
                else:
                    buf.mul_(momentum).add_(keep * grad)
                with_momentum = torch.where(nesterov, grad + momentum * buf, buf)
                step = torch.where(has_momentum, with_momentum, grad)
            theta.sub_(lr * step)
        on_epoch_end(epoch, r.square().mean(dim=0), theta)
