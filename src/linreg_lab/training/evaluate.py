"""Full-data measurements: the training loss and the exact least-squares optimum."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    """The exact minimiser of the training MSE and its loss."""

    w: torch.Tensor
    b: float
    loss: float


def least_squares(X: torch.Tensor, y: torch.Tensor) -> LeastSquares:
    """Solve the normal equations in float64, a chunk at a time (no float64 copy of X).

    torch.linalg.lstsq in float32 returned all zeros at N=10^7 (its default cutoff), hence this.
    """
    n, d = X.shape
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=X.device)
    moment = torch.zeros(d + 1, dtype=torch.float64, device=X.device)
    y_sq = 0.0
    rows = min(_LSQ_CHUNK_ROWS, n)
    # [X_chunk, 1] in one reused float64 buffer: fresh allocations are slow on this VM.
    A = torch.ones(rows, d + 1, dtype=torch.float64, device=X.device)
    y_buffer = torch.empty(rows, dtype=torch.float64, device=X.device)
    for start in range(0, n, rows):
        count = min(rows, n - start)
        A_chunk, y_chunk = A[:count], y_buffer[:count]
        A_chunk[:, :d].copy_(X[start : start + count])
        y_chunk.copy_(y[start : start + count].view(-1))
        gram.addmm_(A_chunk.T, A_chunk)
        moment.addmv_(A_chunk.T, y_chunk)
        y_sq += float(y_chunk.dot(y_chunk))
    theta = torch.linalg.lstsq(gram, moment.unsqueeze(1), driver="gelsd" if X.is_cpu else None)
    theta = theta.solution.view(-1)
    # ||A theta - y||^2 = y'y - theta'A'y at the optimum; float64 keeps the cancellation exact.
    loss = max((y_sq - float(theta @ moment)) / n, 0.0)
    return LeastSquares(theta[:d].float(), float(theta[d]), loss)
