"""The analytic engine: SGD on a linear model with the MSE gradient in closed form.

On CPU every batch size runs one compiled loop (numba) that reads each sampled row once; on a
GPU each step is two BLAS calls into reused buffers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from linreg_lab import signals
from linreg_lab.data import packed_rows

# On CPU the compiled loop beat the BLAS path at every shape measured (`make bench`, "paths"
# rows: batch 100 to 10^4, D 100 to 1000; torch with 1 and 2 threads): it reads each sampled row
# once, where BLAS reads it three times (gather, X w, X^T r) and pays dispatch per step.
# But loading it costs 0.5-1 s once per process (import numba, numba's CPU target, the cached
# machine code), and the BLAS path ~20 us a step plus ~1 ns a multiply-add: a run below both
# limits finishes sooner without it, unless this process has loaded it already. The default
# experiment has 300 steps and 12 000 multiply-adds.
_KERNEL_LOAD_IN_STEPS = 20_000
_KERNEL_LOAD_IN_WORK = 1 << 26
# Multiply-adds per compiled call: the loop returns to Python this often (~10-50 ms), so a
# signal's stop request is acted on promptly.
WORK_PER_CALL = 1 << 24
# Prefetch rows once X outgrows the L1/L2 caches (it paid off from N 10^5, D 3: 1.2 MB).
_PREFETCH_MIN_BYTES = 1 << 18
# Split each batch's rows between torch's threads once X outgrows the L2 caches and each thread's
# share of a batch repays the threads' meeting after it (~1 us): shuffled rows beyond the L3
# cache are memory latency bound, and two cores keep twice as many reads in flight. Measured on
# 2 cores, D 100: beyond the L3 (N 4 x 10^6), 1.8x at batch 32 and 1000, 1.2x at batch 16,
# slower from batch 10 down; within it (N 25 000 to 10^5), 1.2-1.7x at batch 1000, slower at 32.
_PARALLEL_MIN_BYTES = 1 << 24
_PARALLEL_MIN_BATCH = 256
_UNCACHED_BYTES = 1 << 27
_PARALLEL_MIN_BATCH_UNCACHED = 32
_kernels_loaded = False  # this process has loaded the compiled loops: no load left to repay


def kernels():
    """The compiled loops (linreg_lab.engines.kernels), loaded on first use."""
    global _kernels_loaded
    from linreg_lab.engines import kernels as module

    _kernels_loaded = True
    return module


@dataclass(frozen=True)
class SGDHyper:
    """The torch.optim.SGD settings the analytic engine reproduces."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


def uses_blas(device: torch.device, total_steps: int, total_work: int, compiled="auto") -> bool:
    """Whether the BLAS path runs: on GPUs, with compiled "false", and for CPU runs too short
    to repay loading numba (compiled "auto"); total_work: epochs * N * (D + 1) multiply-adds."""
    compiled = str(compiled).lower()
    if device.type != "cpu" or compiled == "false":
        return True
    if compiled == "true":
        return False
    short = total_steps < _KERNEL_LOAD_IN_STEPS and total_work < _KERNEL_LOAD_IN_WORK
    return short and not _kernels_loaded


def train_analytic(
    theta: torch.Tensor,
    hyper: SGDHyper,
    X: torch.Tensor,
    y: torch.Tensor,
    orders: Iterable[torch.Tensor],
    batch_size: int,
    on_epoch_end: Callable[[int, float, float], None],
    epochs: int,
    compiled: str = "auto",
) -> None:
    """Train theta = [w, b] (float32, updated in place) for every order in orders.

    on_epoch_end(epoch, last_batch_loss, b) runs after each epoch; compiled: see uses_blas.
    """
    n, d = X.shape
    y = y.view(-1)
    if not uses_blas(X.device, epochs * -(-n // batch_size), epochs * n * (d + 1), compiled):
        _train_compiled(theta, hyper, X, y, orders, batch_size, on_epoch_end)
        return
    run_epoch = _BlasEpochs(theta, X, y, batch_size, hyper)
    for epoch, order in enumerate(orders, start=1):
        last_batch_loss, b = run_epoch(order)
        on_epoch_end(epoch, last_batch_loss, b)


def _train_compiled(theta, h: SGDHyper, X, y, orders, batch_size: int, on_epoch_end) -> None:
    """train_analytic's CPU path: one compiled call per epoch (per WORK_PER_CALL on long ones).

    Each step is in the kernel; this loop is the whole per-fit overhead, so it stays lean.
    """
    d = X.shape[1]
    X_np, y_np = compiled_arrays(X, y)
    stepper = CompiledSteps(theta, h, X_np.nbytes, batch_size)
    for epoch, order in enumerate(orders, start=1):
        loss = stepper.run(X_np, y_np, order.numpy())
        on_epoch_end(epoch, loss, float(stepper.theta[d]))


class CompiledSteps:
    """The compiled SGD steps (kernels.sgd_steps, or its threaded form on large data) over
    any rows and order, with theta and the momentum buffer carried from one call to the next:
    one epoch over rows in memory, or one window after another of a streamed table."""

    def __init__(self, theta: torch.Tensor, h: SGDHyper, x_bytes: int, batch_size: int):
        loops = kernels()
        self.theta = theta.numpy()
        d = self.theta.shape[0] - 1
        self.buf = np.zeros(d + 1, self.theta.dtype)
        self.has_buf = False
        self.hyper = (h.lr, h.momentum, h.dampening, h.weight_decay, h.nesterov)
        self.batch_size = batch_size
        threads = _kernel_threads(x_bytes, batch_size)
        if threads > 1:  # the same steps, each batch's rows split between threads
            from linreg_lab.engines.thread_team import sgd_steps_on_threads

            self.steps, self.last = sgd_steps_on_threads, threads
        else:
            self.steps, self.last = loops.sgd_steps, x_bytes >= _PREFETCH_MIN_BYTES
        # Whole batches per call, so batch boundaries do not depend on the call size. Threads
        # share a call's work, and each call starts them (~0.3 ms): calls of up to ~0.1 s.
        work = WORK_PER_CALL * (4 * threads if threads > 1 else 1)
        self.span = max(1, max(1, work // (d + 1)) // batch_size) * batch_size

    def run(self, X_np: np.ndarray, y_np: np.ndarray, order_np: np.ndarray) -> float:
        """Steps over the rows of X_np in order_np's order, batch_size at a time (the last
        batch may be short); the last batch's loss."""
        count = order_np.shape[0]
        loss = np.nan
        for begin in range(0, count, self.span):
            signals.check()  # a stop request (Ctrl-C, SIGTERM) acts between calls
            loss, self.has_buf = self.steps(
                X_np, y_np, order_np, begin, min(begin + self.span, count), self.batch_size,
                self.theta, self.buf, self.has_buf, *self.hyper, self.last,
            )  # fmt: skip
        return float(loss)


def compiled_arrays(X: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """X and y (1-D) as the compiled loops take them: the packed [X y] rows when the data
    has them (each target read with its row), else X itself."""
    rows = packed_rows(X, y)
    if rows is None:
        return X.numpy(), y.reshape(-1).numpy()
    return rows, rows[:, X.shape[1]]


def _kernel_threads(x_bytes: int, batch_size: int) -> int:
    """Threads for the compiled loop: torch's count (set from trainer.threads) on large data."""
    if os.name != "posix":  # the threads' barrier yields with POSIX's sched_yield
        return 1
    uncached = x_bytes >= _UNCACHED_BYTES and batch_size >= _PARALLEL_MIN_BATCH_UNCACHED
    if uncached or (x_bytes >= _PARALLEL_MIN_BYTES and batch_size >= _PARALLEL_MIN_BATCH):
        return max(1, torch.get_num_threads())
    return 1


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
            if start % 4096 < self._batch_size:
                signals.check()
            batch = order[start : start + self._batch_size]
            count = batch.shape[0]
            X_batch = torch.index_select(X, 0, batch, out=self._X_batch[:count])
            y_batch = torch.index_select(y, 0, batch, out=self._y_batch[:count])
            residual = torch.addmv(y_batch, X_batch, w, beta=-1).add_(b)
            torch.mv(X_batch.T, residual, out=grad_w)
            torch.sum(residual, dim=0, keepdim=True, out=grad_b)
            grad.mul_(2.0 / count)
            self._buf = sgd_step(theta, grad, h, self._buf)
        return float(residual.square().mean()), float(theta[-1])


def sgd_step(
    theta: torch.Tensor, grad: torch.Tensor, h: SGDHyper, buf: torch.Tensor | None
) -> torch.Tensor | None:
    """torch.optim.SGD's update of theta by the batch gradient grad (overwritten); buf: the
    momentum buffer (None before the first step). Returns the buffer for the next step."""
    if h.weight_decay:
        grad.add_(theta, alpha=h.weight_decay)
    if h.momentum:
        if buf is None:
            buf = grad.clone()
        else:
            buf.mul_(h.momentum).add_(grad, alpha=1.0 - h.dampening)
        step = grad.add(buf, alpha=h.momentum) if h.nesterov else buf
    else:
        step = grad
    theta.add_(step, alpha=-h.lr)
    return buf
