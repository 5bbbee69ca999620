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


def as_made(module: nn.Module) -> nn.Module:
    """A model of the user's own (model.module), used as its class made it: its own
    initialisation. It must take in_features (filled in from the data) and map (N, D) to (N, 1)."""
    return module


def model_mse(model: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk: int = 65536) -> float:
    """Mean squared error of any model over all rows (forward passes in chunks, in eval mode,
    on the model's device, summed in float64): the losses of a model that is not a single
    linear layer."""
    if X.shape[0] == 0:
        return float("nan")
    device = next(model.parameters(), torch.empty(0)).device
    training = model.training
    model.eval()  # dropout off, batch norm's statistics untouched by measuring
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, X.shape[0], chunk):
                rows = X[start : start + chunk].to(device)
                residual = model(rows).reshape(-1) - y[start : start + chunk].to(device).reshape(-1)
                total += float(residual.double().square().sum())
    finally:
        model.train(training)
    return total / X.shape[0]


def saved(model: nn.Module) -> bytes:
    """The trained module as torch.save writes it: what a run stores for a model that is not
    linear (tracking/pyfunc_model.py loads it onto the CPU; its class is imported by name).
    Raises what pickling raises for a module it cannot save (a lambda among its attributes)."""
    import io

    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


def code_folder(model: nn.Module) -> str | None:
    """The folder of the package that defines model's class (a user's own, e.g. mylab/), for
    the logged model to carry; None when it is installed (site-packages) or is torch's."""
    import importlib
    import os

    top = type(model).__module__.split(".")[0]
    if top in {"torch", "linreg_lab", "__main__"}:
        return None
    path = getattr(importlib.import_module(top), "__file__", None)  # imported already
    if not path:
        return None
    if os.path.basename(path) == "__init__.py":
        path = os.path.dirname(path)
    if any(part in {"site-packages", "dist-packages"} for part in path.split(os.sep)):
        return None
    return os.path.abspath(path)
