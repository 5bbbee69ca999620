"""Models of a user's own, for tests (declared with LINREG_TARGETS=tests)."""

from __future__ import annotations

import torch
from torch import nn


class WithLambda(nn.Module):
    """A linear layer and a lambda among its attributes: torch.save cannot pickle it."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        self.act = lambda x: x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))
