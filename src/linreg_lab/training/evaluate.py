"""Full-data measurements: the training loss and the exact least-squares optimum."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_CHUNK_ROWS = 1 << 18


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
    for start in range(0, n, _CHUNK_ROWS):
        X_chunk = X[start : start + _CHUNK_ROWS].double()
        y_chunk = y[start : start + _CHUNK_ROWS].view(-1).double()
        ones = torch.ones(X_chunk.shape[0], 1, dtype=torch.float64, device=X.device)
        A = torch.cat([X_chunk, ones], dim=1)
        gram += A.T @ A
        moment += A.T @ y_chunk
        y_sq += float(y_chunk.square().sum())
    theta = torch.linalg.lstsq(gram, moment.unsqueeze(1), driver="gelsd" if X.is_cpu else None)
    theta = theta.solution.view(-1)
    # ||A theta - y||^2 = y'y - theta'A'y at the optimum; float64 keeps the cancellation exact.
    loss = max((y_sq - float(theta @ moment)) / n, 0.0)
    return LeastSquares(theta[:d].float(), float(theta[d]), loss)
