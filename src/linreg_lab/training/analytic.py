"""The analytic engine: SGD on a linear model with the MSE gradient in closed form.

On CPU every batch size runs one compiled loop (numba) that reads each sampled row once; on a
GPU each step is two BLAS calls into reused buffers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

# On CPU the compiled loop beat the BLAS path at every shape measured (`make bench`, "paths"
# rows: batch 100 to 10^4, D 100 to 1000; torch with 1 and 2 threads): it reads each sampled row
# once, where BLAS reads it three times (gather, X w, X^T r) and pays dispatch per step.
# But loading it costs 0.5-1 s once per process (import numba, numba's CPU target, the cached
# machine code), and the BLAS path ~20 us a step plus ~1 ns a multiply-add: a run below both
# limits finishes sooner without it, unless this process has loaded it already. The default
# experiment has 300 steps and 12 000 multiply-adds.
_KERNEL_LOAD_IN_STEPS = 20_000
_KERNEL_LOAD_IN_WORK = 1 << 26
_KERNEL_MODULE = "linreg_lab.training.sgd_kernels"
# Tests pin a path: "compiled" or "blas".
_FORCE_PATH: str | None = None
# Multiply-adds per compiled call: the loop returns to Python this often (~10-50 ms), so Ctrl-C
# acts promptly.
_WORK_PER_CALL = 1 << 24
# Prefetch rows once X outgrows the L1/L2 caches (it paid off from N 10^5, D 3: 1.2 MB).
_PREFETCH_MIN_BYTES = 1 << 18


@dataclass(frozen=True)
class SGDHyper:
    """The torch.optim.SGD settings the analytic engine reproduces."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


def uses_blas(device: torch.device, total_steps: int, total_work: int) -> bool:
    """Whether the BLAS path runs: on GPUs, and for CPU runs too short to repay loading numba.

    total_work: multiply-adds of the whole run, epochs * N * (D + 1).
    """
    if _FORCE_PATH is not None:
        return _FORCE_PATH == "blas"
    if device.type != "cpu":
        return True
    short = total_steps < _KERNEL_LOAD_IN_STEPS and total_work < _KERNEL_LOAD_IN_WORK
    return short and _KERNEL_MODULE not in sys.modules


def train_analytic(
    theta: torch.Tensor,
    hyper: SGDHyper,
    X: torch.Tensor,
    y: torch.Tensor,
    orders: Iterable[torch.Tensor],
    batch_size: int,
    on_epoch_end: Callable[[int, float, float], None],
    epochs: int,
) -> None:
    """Train theta = [w, b] (float32, updated in place) for every order in orders.

    on_epoch_end(epoch, last_batch_loss, b) runs after each epoch.
    """
    n, d = X.shape
    if uses_blas(X.device, epochs * -(-n // batch_size), epochs * n * (d + 1)):
        run_epoch = _BlasEpochs(theta, X, y.view(-1), batch_size, hyper)
    else:
        run_epoch = _CompiledEpochs(theta, X, y.view(-1), batch_size, hyper)
    for epoch, order in enumerate(orders, start=1):
        last_batch_loss, b = run_epoch(order)
        on_epoch_end(epoch, last_batch_loss, b)


class _CompiledEpochs:
    def __init__(
        self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, batch_size: int, h: SGDHyper
    ):
        from linreg_lab.training.sgd_kernels import sgd_steps  # compiles/loads only when used

        self._steps = sgd_steps
        self._theta, self._X, self._y = theta.numpy(), X.numpy(), y.numpy()
        self._batch_size = batch_size
        self._hyper = (h.lr, h.momentum, h.dampening, h.weight_decay, h.nesterov)
        self._buf = np.zeros(X.shape[1] + 1, np.float32)
        self._has_buf = False
        self._prefetch = X.numel() * X.element_size() >= _PREFETCH_MIN_BYTES
        # Whole batches per call, so batch boundaries do not depend on the call size.
        samples = max(1, _WORK_PER_CALL // (X.shape[1] + 1))
        self._span = max(1, samples // batch_size) * batch_size

    def __call__(self, order: torch.Tensor) -> tuple[float, float]:
        order_np = order.numpy()
        n = order_np.shape[0]
        loss = np.nan
        for begin in range(0, n, self._span):
            loss, self._has_buf = self._steps(
                self._X, self._y, order_np, begin, min(begin + self._span, n), self._batch_size,
                self._theta, self._buf, self._has_buf, *self._hyper, self._prefetch,
            )  # fmt: skip
        return float(loss), float(self._theta[-1])


class _BlasEpochs:
    def __init__(
        self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, batch_size: int, h: SGDHyper
    ):
        self._theta, self._X, self._y, self._batch_size, self._hyper = theta, X, y, batch_size, h
        d = X.shape[1]
        rows = min(batch_size, X.shape[0])
        # Reused buffers: fresh allocations are the slow part of a large gather on this VM.
        self._X_batch = torch.empty(rows, d, dtype=X.dtype, device=X.device)
        self._y_batch = torch.empty(rows, dtype=y.dtype, device=X.device)
        self._grad = torch.empty(d + 1, dtype=X.dtype, device=X.device)
        self._buf: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, order: torch.Tensor) -> tuple[float, float]:
        h, X, y, grad, theta = self._hyper, self._X, self._y, self._grad, self._theta
        d, n = X.shape[1], X.shape[0]
        order = order.to(X.device)
        w, b, grad_w, grad_b = theta[:d], theta[d:], grad[:d], grad[d:]
        residual = torch.empty(0, dtype=X.dtype, device=X.device)
        for start in range(0, n, self._batch_size):
            batch = order[start : start + self._batch_size]
            count = batch.shape[0]
            X_batch = torch.index_select(X, 0, batch, out=self._X_batch[:count])
            y_batch = torch.index_select(y, 0, batch, out=self._y_batch[:count])
            residual = torch.addmv(y_batch, X_batch, w, beta=-1).add_(b)
            torch.mv(X_batch.T, residual, out=grad_w)
            torch.sum(residual, dim=0, keepdim=True, out=grad_b)
            grad.mul_(2.0 / count)
            self._step(theta, grad, h)
        return float(residual.square().mean()), float(theta[-1])

    def _step(self, theta: torch.Tensor, grad: torch.Tensor, h: SGDHyper) -> None:
        if h.weight_decay:
            grad.add_(theta, alpha=h.weight_decay)
        if h.momentum:
            if self._buf is None:
                self._buf = grad.clone()
            else:
                self._buf.mul_(h.momentum).add_(grad, alpha=1.0 - h.dampening)
            step = grad.add(self._buf, alpha=h.momentum) if h.nesterov else self._buf
        else:
            step = grad
        theta.add_(step, alpha=-h.lr)
