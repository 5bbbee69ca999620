"""The tutorial's loop, with in-memory batches: any model, any torch optimizer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

EpochCallback = Callable[[int, float], None]


def train_autograd(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    orders: Iterable[torch.Tensor],
    batch_size: int,
    on_epoch_end: EpochCallback,
) -> None:
    """Minibatch training: forward, MSE, backward, step; on_epoch_end(epoch, last_batch_loss)."""
    loss_fn = nn.MSELoss()
    for epoch, order in enumerate(orders, start=1):
        order = order.to(X.device)
        for start in range(0, X.shape[0], batch_size):
            # A slice of the epoch's order, gathered from memory: no per-sample collation.
            batch = order[start : start + batch_size]
            loss = loss_fn(model(X[batch]), y[batch])

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        on_epoch_end(epoch, loss.item())
