"""Pick the engine for a model and optimizer, and run it with the shared batch order."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from linreg_lab.data import RegressionData
from linreg_lab.model import linear_parameters
from linreg_lab.training.analytic import SGDHyper, train_analytic
from linreg_lab.training.settings import TrainerSettings, batch_orders

# on_epoch_end(epoch, last_batch_loss, w, b): w and b are the model's values after the epoch.
EpochCallback = Callable[[int, float, torch.Tensor, float], None]


class EngineError(ValueError):
    pass


def sgd_hyper(optimizer_factory: Callable) -> SGDHyper | None:
    """The SGD settings of a functools.partial(torch.optim.SGD, ...), else None."""
    if not isinstance(optimizer_factory, functools.partial):
        return None
    if optimizer_factory.func is not torch.optim.SGD or optimizer_factory.args:
        return None
    kwargs = dict(optimizer_factory.keywords)
    if set(kwargs) - {"lr", "momentum", "dampening", "weight_decay", "nesterov"}:
        return None
    return SGDHyper(**{k: (bool(v) if k == "nesterov" else float(v)) for k, v in kwargs.items()})


def choose_engine(requested: str, model: nn.Module, optimizer_factory: Callable) -> str:
    eligible = _is_linear_with_bias(model) and sgd_hyper(optimizer_factory) is not None
    if requested == "auto":
        return "analytic" if eligible else "autograd"
    if requested == "analytic" and not eligible:
        raise EngineError(
            "trainer.engine=analytic needs model=linear (one output, with bias) and optimizer=sgd; "
            "use trainer.engine=auto or autograd"
        )
    return requested


def _is_linear_with_bias(model: nn.Module) -> bool:
    return isinstance(model, nn.Linear) and model.out_features == 1 and model.bias is not None


def fit(
    model: nn.Module,
    optimizer_factory: Callable,
    data: RegressionData,
    settings: TrainerSettings,
    on_epoch_end: EpochCallback,
) -> str:
    """Train model in place on data; returns the engine that ran."""
    engine = choose_engine(settings.engine, model, optimizer_factory)
    device = settings.torch_device()
    data = data.to(device)
    orders = batch_orders(
        data.num_samples,
        settings.epochs,
        settings.shuffle,
        torch.Generator().manual_seed(settings.seed),
    )
    if engine == "analytic":
        _fit_analytic(model, sgd_hyper(optimizer_factory), data, orders, settings, on_epoch_end)
    else:
        from linreg_lab.training.autograd_loop import train_autograd

        def report(epoch: int, last_batch_loss: float) -> None:
            params = linear_parameters(model)
            w, b = params if params is not None else (torch.empty(0), float("nan"))
            on_epoch_end(epoch, last_batch_loss, w, b)

        model.to(device)
        optimizer = optimizer_factory(model.parameters())
        train_autograd(model, optimizer, data.X, data.y, orders, settings.batch_size, report)
    return engine


def _fit_analytic(model, hyper, data, orders, settings, on_epoch_end: EpochCallback) -> None:
    """theta = [w, b] trains outside the model (no autograd); the model gets it at the end."""
    if model.weight.device != data.X.device:
        model.to(data.X.device)
    theta = torch.cat([model.weight.detach().view(-1), model.bias.detach().view(-1)])
    w = theta[:-1]

    def report(epoch: int, last_batch_loss: float, b: float) -> None:
        on_epoch_end(epoch, last_batch_loss, w, b)

    try:
        train_analytic(
            theta, hyper, data.X, data.y, orders, settings.batch_size, report, settings.epochs
        )
    finally:  # also when a callback stops training (divergence, Ctrl-C)
        with torch.no_grad():
            model.weight.view(-1).copy_(w)
            model.bias.copy_(theta[-1:])
