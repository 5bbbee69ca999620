"""A user's model: not a single nn.Linear, so linreg-lab trains it with its autograd engine."""

from __future__ import annotations

import torch
from torch import nn


class Poly(nn.Module):
    """y = w1 . x + w2 . x^2 + b: a linear layer over the features and their squares."""

    def __init__(self, in_features: int, degree: int = 2) -> None:
        super().__init__()
        self.degree = degree
        self.linear = nn.Linear(in_features * degree, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x**k for k in range(1, self.degree + 1)], dim=1))
