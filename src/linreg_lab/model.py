"""The model: a torch.nn.Linear initialised the way the tutorial does."""

import torch
from torch import nn


def init_linear(module: nn.Linear, weight_std: float = 0.01, bias_init: float = 0.0) -> nn.Linear:
    """Re-initialise module in place: weights ~ N(0, weight_std^2), bias = bias_init."""
    with torch.no_grad():
        module.weight.normal_(0.0, weight_std)
        if module.bias is not None:
            module.bias.fill_(bias_init)
    return module


def linear_parameters(model: nn.Module) -> tuple[torch.Tensor, float] | None:
    """(w, b) of a single-output linear model, or None for any other model."""
    if not isinstance(model, nn.Linear) or model.out_features != 1:
        return None
    bias = float(model.bias.detach()) if model.bias is not None else 0.0
    return model.weight.detach().reshape(-1), bias
