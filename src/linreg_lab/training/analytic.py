"""The analytic engine: SGD on a linear model with the MSE gradient in closed form.

Small batches run a compiled per-sample loop (numba), where per-step Python dispatch would
dominate; large batches and GPUs run two BLAS calls per step into reused buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

# At or above this many multiply-adds per step, BLAS beats the per-sample compiled loop.
_BLAS_MIN_WORK = 1 << 14
# Samples per compiled call: the loop returns to Python this often, so Ctrl-C acts within ~0.1 s.
_SAMPLES_PER_CALL = 1 << 19


@dataclass(frozen=True)
class SGDHyper:
    """The torch.optim.SGD settings the analytic engine reproduces."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


def uses_blas(batch_size: int, num_features: int, device: torch.device) -> bool:
    return device.type != "cpu" or batch_size * (num_features + 1) >= _BLAS_MIN_WORK


def train_analytic(
    theta: torch.Tensor,
    hyper: SGDHyper,
    X: torch.Tensor,
    y: torch.Tensor,
    orders: Iterable[torch.Tensor],
    batch_size: int,
    on_epoch_end: Callable[[int, float], None],
) -> None:
    """Train theta = [w, b] (float32, updated in place) for every order in orders."""
    if uses_blas(batch_size, X.shape[1], X.device):
        run_epoch = _BlasEpochs(X, y.view(-1), batch_size, hyper)
    else:
        run_epoch = _CompiledEpochs(X, y.view(-1), batch_size, hyper)
    for epoch, order in enumerate(orders, start=1):
        last_batch_loss = run_epoch(theta, order)
        on_epoch_end(epoch, last_batch_loss)


class _CompiledEpochs:
    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, hyper: SGDHyper):
        from linreg_lab.training.sgd_kernels import sgd_steps  # compiles/loads only when used

        self._steps = sgd_steps
        self._X, self._y = X.numpy(), y.numpy()
        self._batch_size, self._hyper = batch_size, hyper
        self._buf = np.zeros(X.shape[1] + 1, np.float32)
        self._has_buf = False
        # Whole batches per call, so batch boundaries do not depend on the call size.
        self._span = max(1, _SAMPLES_PER_CALL // batch_size) * batch_size

    def __call__(self, theta: torch.Tensor, order: torch.Tensor) -> float:
        h, theta_np, order_np = self._hyper, theta.numpy(), order.numpy()
        n = order_np.shape[0]
        loss = float("nan")
        for begin in range(0, n, self._span):
            loss, self._has_buf = self._steps(
                self._X, self._y, order_np, begin, min(begin + self._span, n), self._batch_size,
                theta_np, self._buf, self._has_buf,
                h.lr, h.momentum, h.dampening, h.weight_decay, h.nesterov,
            )  # fmt: skip
        return float(loss)


class _BlasEpochs:
    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, hyper: SGDHyper):
        self._X, self._y, self._batch_size, self._hyper = X, y, batch_size, hyper
        d = X.shape[1]
        rows = min(batch_size, X.shape[0])
        # Reused buffers: fresh allocations are the slow part of a large gather on this VM.
        self._X_batch = torch.empty(rows, d, dtype=X.dtype, device=X.device)
        self._y_batch = torch.empty(rows, dtype=y.dtype, device=X.device)
        self._grad = torch.empty(d + 1, dtype=X.dtype, device=X.device)
        self._buf: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, theta: torch.Tensor, order: torch.Tensor) -> float:
        h, X, y, grad = self._hyper, self._X, self._y, self._grad
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
        return float(residual.square().mean())

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
