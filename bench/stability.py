"""The README's stability table: the largest lr minibatch SGD trains at, measured by bisection,
against the bounds linreg-lab states (engines/stability.py). Not part of `make bench` (it
measures correctness, not speed): `python bench/stability.py [--momentum 0 0.9]`.

"Trains" means: 20 epochs of torch.optim.SGD at that lr stay finite and end below the loss
they started from (the analytic engine, the run's own loop)."""

from __future__ import annotations

import argparse
import functools

import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.engines import fit
from linreg_lab.engines.least_squares import least_squares
from linreg_lab.engines.monitor import Diverged
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.engines.stability import curvature
from linreg_lab.model import init_linear
from linreg_lab.tables import load_diabetes


def _mse(model, data) -> float:
    w, b = model.weight.detach().view(-1).double(), float(model.bias.detach())
    return float((data.X.double() @ w + b - data.y.view(-1).double()).square().mean())


def trains(data, lr: float, batch: int, momentum: float, epochs: int = 20) -> bool:
    torch.manual_seed(0)
    model = init_linear(torch.nn.Linear(data.num_features, 1))
    start = _mse(model, data)
    sgd = functools.partial(torch.optim.SGD, lr=lr, momentum=momentum)
    try:
        fit(model, sgd, data, TrainerSettings(epochs=epochs, batch_size=batch),
            lambda *_: None)  # fmt: skip
    except Diverged:
        return False
    end = _mse(model, data)
    return end == end and end < start


def largest_stable(data, batch: int, momentum: float, high: float) -> float:
    """Bisection on a log scale between a stable lr and an unstable one, to 1%."""
    low = high / 1000
    while not trains(data, low, batch, momentum):
        low /= 10
    while trains(data, high, batch, momentum):
        high *= 2
    while high / low > 1.01:
        mid = (low * high) ** 0.5
        low, high = (mid, high) if trains(data, mid, batch, momentum) else (low, mid)
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--momentum", type=float, nargs="+", default=[0.0, 0.9])
    args = parser.parse_args()
    datasets = {
        "tutorial": (make_synthetic_regression(), [1, 10, 100]),
        "diabetes": (load_diabetes(split={"val": 0.2, "test": 0.0, "seed": 0}), [1, 8, 32, 100]),
    }
    print("| data | momentum | batch | measured | estimate | full-batch bound |")
    print("|---|---|---|---|---|---|")
    for name, (data, batches) in datasets.items():
        optimum = least_squares(data.X, data.y)
        c = curvature(optimum.gram, optimum.num_samples)
        for momentum in args.momentum:
            full = c.full_batch_bound(momentum=momentum)
            for batch in [*batches, data.num_samples]:
                batch = min(batch, data.num_samples)
                measured = largest_stable(data, batch, momentum, high=full)
                estimate = c.batch_bound(batch, momentum=momentum)
                print(f"| {name} | {momentum:g} | {batch} | {measured:.3g} | {estimate:.3g} "
                      f"| {full:.3g} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
