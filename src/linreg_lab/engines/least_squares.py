"""Full-data measurements: the training loss and the exact least-squares optimum."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np
import torch

from linreg_lab.engines.ahead import in_order

_CHUNK_ROWS = 1 << 18
_LSQ_CHUNK_ROWS = 1 << 14  # 13 MB of float64 at D 100: stays in cache-friendly sizes


def mse(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: float) -> float:
    """Mean squared error of y_hat = X w + b over all rows, accumulated in float64."""
    total = 0.0
    w = w.to(X.device, X.dtype)
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        X_chunk, y_chunk = X[start : start + _CHUNK_ROWS], y[start : start + _CHUNK_ROWS]
        residual = torch.addmv(y_chunk.view(-1), X_chunk, w, beta=-1).add_(b)
        total += float(residual.double().square().sum())
    return total / X.shape[0]


@dataclass(frozen=True)
class LeastSquares:
    """The exact minimiser of the training MSE and its loss, and the sums that give any
    parameters' MSE without a pass over the data (losses)."""

    w: torch.Tensor
    b: float
    loss: float
    gram: torch.Tensor  # [X 1]' [X 1] in float64, (D + 1, D + 1)
    # gram [w, b] - [X 1]' y at the optimum: not quite 0 after rounding, so kept in the loss
    gradient: torch.Tensor
    theta: torch.Tensor  # the optimum [w, b] in float64
    num_samples: int

    @functools.cached_property
    def curvature(self):
        """The spectrum of gram / N (engines.stability.Curvature), computed once per optimum:
        the jobs of a sweep that share the data share it too."""
        from linreg_lab.engines.stability import curvature

        return curvature(self.gram, self.num_samples)

    def losses(self, theta: torch.Tensor) -> torch.Tensor:
        """The full-data MSE of each column [w, b] of theta, (D + 1, K): K values in float64.

        MSE(theta) = loss + (d' gram d + 2 d' gradient) / N with d = theta - optimum: exact
        algebra, ~(D + 1)^2 multiply-adds a column where a pass over X costs N (D + 1), and the
        excess over the optimum never cancels against the loss itself.
        """
        d = theta.to(self.gram.device, torch.float64) - self.theta.view(-1, 1)
        excess = (self.gram @ d).mul_(d).sum(dim=0).add_(self.gradient @ d, alpha=2)
        return excess.div_(self.num_samples).add_(self.loss)

    def loss_of(self, w: torch.Tensor, b: float) -> float:
        """The full-data MSE of y_hat = X w + b."""
        theta = torch.empty(w.numel() + 1, 1, dtype=torch.float64, device=self.gram.device)
        theta[:-1, 0] = w.detach().reshape(-1)
        theta[-1, 0] = b
        return float(self.losses(theta))


def _solve(gram: torch.Tensor, moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal equations' solution theta (gram theta = moment) and gram theta - moment."""
    driver = "gelsd" if gram.is_cpu else None
    theta = torch.linalg.lstsq(gram, moment.unsqueeze(1), driver=driver).solution.view(-1)
    return theta, gram @ theta - moment


def from_sums(sums: torch.Tensor, n: int, loss: float | None = None) -> LeastSquares:
    """The least-squares optimum of rows whose augmented sums are sums = [A y]' [A y] with
    A = [X 1] ((D + 2) x (D + 2), float64), as a streamed table gathers them in one pass: the
    same solution as least_squares(X, y). Its loss comes from the sums (the rows are not read
    again), which is exact to float64's rounding when X and y are near zero mean (the stream
    centres them first); loss: the optimum's loss where the caller knows it better."""
    d1 = sums.shape[0] - 1
    gram, moment, yy = sums[:d1, :d1].clone(), sums[:d1, d1].clone(), float(sums[d1, d1])
    theta, gradient = _solve(gram, moment)
    if loss is None:
        loss = max(yy - 2 * float(theta @ moment) + float(theta @ gram @ theta), 0.0) / max(n, 1)
    d = d1 - 1
    return LeastSquares(theta[:d].float(), float(theta[d]), loss, gram, gradient, theta, n)


def _float64_chunks(X: torch.Tensor, y: torch.Tensor, rows: int):
    """([X_chunk, 1], y_chunk) in float64, a chunk of rows at a time, in two reused buffers
    (fresh allocations are slow on this VM; no float64 copy of X): the caller may overwrite
    y_chunk, the next chunk refills it."""
    n, d = X.shape
    A = torch.ones(rows, d + 1, dtype=torch.float64, device=X.device)
    y_buffer = torch.empty(rows, dtype=torch.float64, device=X.device)
    for start in range(0, n, rows):
        count = min(rows, n - start)
        A_chunk, y_chunk = A[:count], y_buffer[:count]
        A_chunk[:, :d].copy_(X[start : start + count])
        y_chunk.copy_(y[start : start + count].view(-1))
        yield A_chunk, y_chunk


def least_squares(X: torch.Tensor, y: torch.Tensor) -> LeastSquares:
    """Solve the normal equations in float64, a chunk at a time (no float64 copy of X); the
    optimum's loss from its residuals, a second pass (from the sums, y'y - theta'A'y cancels
    to a few bits when the features are far from zero mean: 2% off at a mean of 1000).

    On the CPU the chunks are split between the run's threads (engines.ahead.in_order), each
    summing whole chunks with BLAS on one thread ([X 1]' [X 1] as a symmetric product: half a
    general one's work), added in the chunks' order: the same bits on any number of threads.
    torch.linalg.lstsq in float32 returned all zeros at N=10^7 (its default cutoff), hence this.
    """
    if X.device.type != "cpu":
        return _least_squares_on(X, y)
    n, d = X.shape
    features, targets = X.detach().numpy(), y.detach().numpy().reshape(-1)
    rows, local = min(_LSQ_CHUNK_ROWS, n), threading.local()
    starts, threads = range(0, n, rows), torch.get_num_threads()

    def chunk(start: int) -> tuple[np.ndarray, np.ndarray]:
        """[X 1] and y of the rows from start, float64, in this thread's buffer."""
        if not hasattr(local, "A"):  # fresh allocations are slow on this VM: one a thread
            local.A = np.ones((rows, d + 1))
        count = min(rows, n - start)
        A = local.A[:count]
        A[:, :d] = features[start : start + count]
        return A, targets[start : start + count].astype(np.float64)

    def sums(start: int) -> tuple[np.ndarray, np.ndarray]:
        A, y_chunk = chunk(start)
        return A.T @ A, A.T @ y_chunk  # (numpy's symmetric product for A.T @ A)

    def squares(start: int) -> float:
        A, y_chunk = chunk(start)
        residual = A @ theta_np - y_chunk
        return float(residual @ residual)

    gram, moment = np.zeros((d + 1, d + 1)), np.zeros(d + 1)
    for gram_part, moment_part in in_order(sums, starts, threads):
        gram += gram_part
        moment += moment_part
    theta, gradient = _solve(torch.from_numpy(gram), torch.from_numpy(moment))
    theta_np = theta.numpy()
    loss = sum(in_order(squares, starts, threads)) / n
    return LeastSquares(theta[:d].float(), float(theta[d]), loss, torch.from_numpy(gram),
                        gradient, theta, n)  # fmt: skip


def _least_squares_on(X: torch.Tensor, y: torch.Tensor) -> LeastSquares:
    """least_squares on X's device (a GPU), with torch's products."""
    n, d = X.shape
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=X.device)
    moment = torch.zeros(d + 1, dtype=torch.float64, device=X.device)
    rows = min(_LSQ_CHUNK_ROWS, n)
    for A_chunk, y_chunk in _float64_chunks(X, y, rows):
        gram.addmm_(A_chunk.T, A_chunk)
        moment.addmv_(A_chunk.T, y_chunk)
    theta, gradient = _solve(gram, moment)
    squares = 0.0
    for A_chunk, residual in _float64_chunks(X, y, rows):
        residual.addmv_(A_chunk, theta, beta=-1)  # A theta - y, in y's buffer
        squares += float(residual.dot(residual))
    loss = squares / n
    return LeastSquares(theta[:d].float(), float(theta[d]), loss, gram, gradient, theta, n)
