"""The engines: what trains a model on data, given plain settings.

fit() picks the engine for a model and optimizer (analytic: a linear model under MSE with SGD,
the gradient in closed form; autograd: anything else) and runs it with the shared batch order
(orders.py). vectorized.py trains K such models in one pass. kernels.py holds every compiled
loop. Nothing here knows about configs, MLflow or sweeps.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
from torch import nn

from linreg_lab.data import RegressionData
from linreg_lab.engines.analytic import SGDHyper, train_analytic
from linreg_lab.engines.orders import seeded_orders
from linreg_lab.engines.settings import EngineError, TrainerSettings
from linreg_lab.model import linear_parameters, model_mse

# on_epoch_end(epoch, last_batch_loss, w, b[, loss, val_loss]): w and b are the model's values
# after the epoch; a model that is not linear passes an empty w and its losses, measured here.
EpochCallback = Callable[..., None]


def sgd_hyper(optimizer_factory: Callable) -> SGDHyper | None:
    """The SGD settings of a functools.partial(torch.optim.SGD, ...), else None."""
    if not isinstance(optimizer_factory, functools.partial):
        return None
    if optimizer_factory.func is not torch.optim.SGD or optimizer_factory.args:
        return None
    kwargs = optimizer_factory.keywords
    if not _SGD_KEYWORDS.issuperset(kwargs):
        return None
    return SGDHyper(**{k: (bool(v) if k == "nesterov" else float(v)) for k, v in kwargs.items()})


_SGD_KEYWORDS = frozenset({"lr", "momentum", "dampening", "weight_decay", "nesterov"})


def choose_engine(
    requested: str,
    model: nn.Module,
    optimizer_factory: Callable,
    streamed: bool = False,
    processes: int = 1,
) -> str:
    """The engine that trains model: raises EngineError for a choice it cannot honour (a
    streamed table, and a job of several processes, train with the analytic engine only)."""
    engine = _choose(requested, model, sgd_hyper(optimizer_factory))
    if processes > 1 and engine != "analytic":
        raise EngineError(
            f"trainer.processes={processes}: data-parallel jobs train a linear model with SGD "
            f"(model=linear, optimizer=sgd); this run needs the {engine} engine (set "
            "trainer.processes=1)"
        )
    if streamed and engine != "analytic":
        raise EngineError(
            "dataset.stream: a streamed table trains a linear model with SGD (model=linear, "
            f"optimizer=sgd, trainer.engine=auto or analytic); this run needs the {engine} "
            "engine (set dataset.stream=false to load the table)"
        )
    return engine


def _choose(requested: str, model: nn.Module, hyper: SGDHyper | None) -> str:
    eligible = hyper is not None and _is_linear_with_bias(model)
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
    on_places: Callable[[list[str]], None] = lambda places: None,
    world=None,
) -> str:
    """Train model in place on data; returns the engine that ran.

    on_places(places): where each rank of a data-parallel job runs ("host:pid", rank order).
    world: the distributed.World this process is a rank of (SLURM's tasks, torchrun), if any.
    """
    hyper = sgd_hyper(optimizer_factory)
    engine = _choose(settings.engine, model, hyper)
    processes = world.size if world is not None else settings.processes
    if processes > 1:
        choose_engine(settings.engine, model, optimizer_factory, data.streamed, processes)
        _fit_data_parallel(model, hyper, data, settings, on_epoch_end, on_places, world)
        return engine
    if data.streamed:
        choose_engine(settings.engine, model, optimizer_factory, streamed=True)
        _fit_streamed(model, hyper, data, settings, on_epoch_end)
        return engine
    device = settings.torch_device()
    data = data.to(device)
    # The same seed gives every engine the same orders.
    orders = seeded_orders(data.num_samples, settings.epochs, settings.shuffle, settings.seed)
    if engine == "analytic":
        _fit_analytic(model, hyper, data, orders, settings, on_epoch_end)
    else:
        from linreg_lab.engines.autograd import train_autograd

        def report(epoch: int, last_batch_loss: float) -> None:
            params = linear_parameters(model)
            if params is not None:
                on_epoch_end(epoch, last_batch_loss, *params)
                return
            # A model of the user's own: its losses from forward passes, no parameters to show
            split = data.split if data.has_validation else None
            val = None if split is None else model_mse(model, split.X_val, split.y_val)
            on_epoch_end(epoch, last_batch_loss, torch.empty(0), float("nan"),
                         model_mse(model, data.X, data.y), val)  # fmt: skip

        model.to(device)
        optimizer = optimizer_factory(model.parameters())
        train_autograd(model, optimizer, data.X, data.y, orders, settings.batch_size, report)
    return engine


def _fit_streamed(model, hyper, data, settings, on_epoch_end: EpochCallback) -> None:
    """A streamed table (streamed.StreamedTable): the compiled SGD steps over one window of
    rows after another, theta and momentum carried across windows, on the CPU."""
    from linreg_lab.engines.analytic import CompiledSteps

    model.to("cpu")
    d = data.num_features
    width = (d + 1) * 4
    with _theta_of(model) as theta:
        stepper = CompiledSteps(theta, hyper, min(data.window, data.num_samples) * width,
                                settings.batch_size)  # fmt: skip
        for epoch in range(1, settings.epochs + 1):
            loss = float("nan")
            for rows, order in data.windows(epoch, settings.shuffle, settings.seed,
                                            settings.batch_size):  # fmt: skip
                loss = stepper.run(rows, rows[:, d], order)
            on_epoch_end(epoch, loss, theta[:d], float(theta[d]))


@contextlib.contextmanager
def _theta_of(model: nn.Module):
    """theta = [w, b] of a linear model, trained outside it (no autograd, no no_grad); the
    model gets theta's values at the end, also when a callback stops training (divergence,
    Ctrl-C). Detached views share the parameters' storage and version counter."""
    weight, bias = model.weight.detach().view(-1), model.bias.detach()
    theta = torch.cat((weight, bias))
    try:
        yield theta
    finally:
        weight.copy_(theta[:-1])
        bias.copy_(theta[-1:])


def _fit_data_parallel(model, hyper, data, settings, on_epoch_end, on_places, world) -> None:
    """Ranks on torch.distributed (engines.distributed): settings.processes on this machine,
    this process rank 0, or this process's place in a world its launcher started."""
    from linreg_lab.engines.distributed import Job, train_data_parallel, train_in_world

    # Ranks started here share this process's threads; a launcher's tasks have their own.
    threads = torch.get_num_threads()
    if world is None:
        threads = max(1, threads // settings.processes)
    job = Job(hyper, data.num_samples, settings.epochs, settings.shuffle, settings.seed,
              settings.batch_size, threads)  # fmt: skip

    def train(theta, X, y, report, table=None) -> None:
        if world is not None:
            train_in_world(theta, job, X, y, world, report, on_places, table)
        else:
            train_data_parallel(theta, job, X, y, settings.processes, report, on_places, table)

    if data.streamed:  # every rank walks the table's windows (engines.distributed)
        model.to("cpu")
        with _theta_of(model) as theta:
            d = data.num_features
            train(theta, None, None,
                  lambda epoch, loss, b: on_epoch_end(epoch, loss, theta[:d], b), data)  # fmt: skip
        return

    _fit_analytic(model, hyper, data.to("cpu"), None, settings, on_epoch_end, train)


def _fit_analytic(
    model, hyper, data, orders, settings, on_epoch_end: EpochCallback, train=None
) -> None:
    """theta = [w, b] trains outside the model (no autograd); the model gets it at the end."""
    if model.weight.device != data.X.device:
        model.to(data.X.device)
    with _theta_of(model) as theta:
        w = theta[:-1]

        def report(epoch: int, last_batch_loss: float, b: float) -> None:
            on_epoch_end(epoch, last_batch_loss, w, b)

        if train is not None:  # another way to train theta (data-parallel ranks)
            train(theta, data.X, data.y, report)
        else:
            train_analytic(theta, hyper, data.X, data.y, orders, settings.batch_size, report,
                           settings.epochs, settings.compiled)  # fmt: skip
