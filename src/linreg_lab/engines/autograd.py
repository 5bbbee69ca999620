"""The tutorial's loop, with in-memory batches: any model, any torch optimizer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from linreg_lab import signals

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
    """Minibatch training: forward, MSE, backward, step; on_epoch_end(epoch, last_batch_loss).

    The step takes a closure, as torch.optim documents, so optimizers that evaluate the loss
    several times a step (LBFGS) work too.
    """
    loss_fn = nn.MSELoss()
    for epoch, order in enumerate(orders, start=1):
        order = order.to(X.device)
        for start in range(0, X.shape[0], batch_size):
            signals.check()  # a stop request acts between steps
            # A slice of the epoch's order, gathered from memory: no per-sample collation.
            batch = order[start : start + batch_size]
            X_batch, y_batch = X[batch], y[batch]

            def closure(X_batch=X_batch, y_batch=y_batch) -> torch.Tensor:
                optimizer.zero_grad()
                loss = loss_fn(model(X_batch), y_batch)
                loss.backward()
                return loss

            loss = optimizer.step(closure)
        on_epoch_end(epoch, float(loss.detach()))
