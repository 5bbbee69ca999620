"""Divergence by the numbers: a loss beyond any plausible value for its data ends the run
FAILED (not only once it overflows), and no converging run is called diverged: noisy
minibatch runs near the stability bound, real tables, targets of any scale."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.engines import fit
from linreg_lab.engines.least_squares import least_squares
from linreg_lab.engines.monitor import DIVERGENCE_FACTOR, Diverged, EpochMonitor
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.engines.stability import NEAR, curvature
from linreg_lab.model import init_linear, linear_parameters
from linreg_lab.tables import load_diabetes, load_table


def train(data, lr: float, batch: int, epochs: int, seed: int = 0, **sgd):
    """(epoch losses, whether it diverged) of SGD on data, monitored as a run is."""
    torch.manual_seed(seed)
    model = init_linear(torch.nn.Linear(data.num_features, 1))
    monitor = EpochMonitor(data, least_squares(data.X, data.y))
    monitor.start(*linear_parameters(model))
    losses = []

    def on_epoch_end(epoch, last, w, b):
        losses.append(monitor.measure(epoch, last, w, b)["train/loss"])

    settings = TrainerSettings(epochs=epochs, batch_size=batch, seed=seed)
    try:
        fit(model, functools.partial(torch.optim.SGD, lr=lr, **sgd), data, settings, on_epoch_end)
    except Diverged as error:
        return losses, str(error)
    return losses, None


def test_a_finite_explosion_is_divergence():
    """The issue's case: diabetes at lr 0.3, batch 8 used to end FINISHED at loss 1e19."""
    data = load_diabetes(split={"val": 0.2, "test": 0.0, "seed": 0})
    _, why = train(data, lr=0.3, batch=8, epochs=3)
    assert why is not None and why.startswith("diverged at epoch ") and "train/loss=" in why
    assert "above" in why and "try a smaller optimizer.lr" in why


@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diabetes_near_its_bounds_is_never_called_diverged(batch, seed):
    """At the largest lr the verdict calls stable (just below 'may diverge': 0.7x the
    minibatch estimate, which at batch 1 is within 3% of where SGD really diverges)."""
    data = load_diabetes(split={"val": 0.2, "test": 0.0, "seed": seed})
    optimum = least_squares(data.X, data.y)
    c = curvature(optimum.gram, optimum.num_samples)
    lr = 0.99 * NEAR * c.batch_bound(batch)
    losses, why = train(data, lr=lr, batch=batch, epochs=30, seed=seed)
    assert why is None, (lr, why)
    start = float(((data.y.double()) ** 2).mean())
    assert max(losses) < start * DIVERGENCE_FACTOR / 10  # far below the ceiling, not just under


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_a_converging_run_on_a_table_of_any_scale_is_not_diverged(tmp_path, scale):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) * [1, 1e3, 1e-3]
    y = (x @ [2.0, 1e-3, 1e3] + 5 + rng.normal(size=500)) * scale
    path = tmp_path / "t.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}).to_csv(path, index=False)
    data = load_table(str(path), "y", split={"val": 0.2, "test": 0.0, "seed": 0})
    losses, why = train(data, lr=0.1, batch=16, epochs=20)
    assert why is None and losses[-1] < losses[0]
    exploding, why = train(data, lr=5.0, batch=16, epochs=20)
    assert why is not None and "diverged at epoch" in why  # the same rule, whatever the units


def test_the_synthetic_near_the_full_batch_bound_converges_and_above_diverges_finitely():
    data = make_synthetic_regression()
    optimum = least_squares(data.X, data.y)
    bound = curvature(optimum.gram, optimum.num_samples).full_batch_bound()
    losses, why = train(data, lr=0.98 * bound, batch=1000, epochs=200)
    assert why is None and losses[-1] < 2e-4
    losses, why = train(data, lr=1.1 * bound, batch=1000, epochs=400)
    assert why is not None and "inf" not in why and "nan" not in why  # caught while finite


def test_a_bad_start_is_not_divergence():
    """A deliberately far initialisation starts above mean(y^2); its own loss sets the scale."""
    data = make_synthetic_regression(num_samples=200)
    monitor = EpochMonitor(data, least_squares(data.X, data.y))
    far = torch.full((3,), 1e4)
    monitor.start(far, 0.0)
    start = monitor.optimum.loss_of(far, 0.0)
    assert monitor.measure(1, 1.0, far * 0.9, 0.0)["train/loss"] < start  # on its way down
    with pytest.raises(Diverged):
        monitor.measure(2, 1.0, far * 1e3, 0.0)
