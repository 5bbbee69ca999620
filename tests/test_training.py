"""The engines: recovered parameters, agreement between engines, seeds, exact least squares."""

from __future__ import annotations

import functools

import pytest
import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.model import init_linear
from linreg_lab.training import analytic
from linreg_lab.training.engine import EngineError, choose_engine, fit
from linreg_lab.training.evaluate import least_squares, mse
from linreg_lab.training.settings import TrainerSettings


def train(data, optimizer=None, **settings):
    torch.manual_seed(settings.get("seed", 42))
    model = init_linear(torch.nn.Linear(data.num_features, 1))
    optimizer = optimizer or functools.partial(torch.optim.SGD, lr=0.03)
    history = []
    engine = fit(
        model, optimizer, data, TrainerSettings(**settings),
        lambda epoch, loss, w, b: history.append((epoch, loss, w.clone(), b)),
    )  # fmt: skip
    return model, history, engine


def params(model) -> torch.Tensor:
    return torch.cat([model.weight.detach().view(-1), model.bias.detach()])


def test_default_recovers_the_truth():
    data = make_synthetic_regression()
    model, history, engine = train(data)
    assert engine == "analytic" and [h[0] for h in history] == [1, 2, 3]
    w, b = params(model)[:3], float(model.bias.detach())
    assert torch.linalg.vector_norm(w - data.true_w) < 0.01 and abs(b - 3.0) < 0.01
    assert abs(mse(data.X, data.y, w, b) - 1e-4) < 0.3e-4


SGD_VARIANTS = [
    {"lr": 0.03},
    {"lr": 0.01, "momentum": 0.9},
    {"lr": 0.01, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01},
    {"lr": 0.01, "momentum": 0.8, "nesterov": True, "weight_decay": 0.001},
]


@pytest.mark.parametrize("sgd", SGD_VARIANTS, ids=str)
@pytest.mark.parametrize("batch_size", [1, 10, 1000])
def test_engines_agree(sgd, batch_size, monkeypatch):
    data = make_synthetic_regression(num_samples=2000, num_features=5)
    optimizer = functools.partial(torch.optim.SGD, **sgd)
    results = {}
    for engine, blas_min_work in [("autograd", 0), ("analytic", 1 << 60), ("analytic", 0)]:
        # blas_min_work picks the analytic engine's compiled loop (huge) or its BLAS path (0).
        monkeypatch.setattr(analytic, "_BLAS_MIN_WORK", blas_min_work)
        model, _, used = train(data, optimizer, engine=engine, batch_size=batch_size, epochs=2)
        results[(used, blas_min_work)] = params(model)
    reference = results[("autograd", 0)]
    for key, value in results.items():
        torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-5, msg=str(key))


def test_same_seed_same_trajectory_other_seed_differs():
    data = make_synthetic_regression()
    _, first, _ = train(data, seed=1)
    _, again, _ = train(data, seed=1)
    _, other, _ = train(data, seed=2)
    assert [h[1] for h in first] == [h[1] for h in again]
    assert [h[1] for h in first] != [h[1] for h in other]


def test_batch_larger_than_dataset_is_full_batch_gradient_descent():
    data = make_synthetic_regression(num_samples=50)
    model, history, _ = train(data, batch_size=500, epochs=200, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    assert len(history) == 200
    assert torch.linalg.vector_norm(params(model)[:3] - data.true_w) < 0.05


def test_adam_runs_on_autograd_and_analytic_refuses_it():
    data = make_synthetic_regression()
    adam = functools.partial(torch.optim.Adam, lr=0.03)
    model, _, engine = train(data, adam, epochs=10)
    assert engine == "autograd"
    assert torch.linalg.vector_norm(params(model)[:3] - data.true_w) < 0.02
    with pytest.raises(EngineError, match="trainer.engine=analytic"):
        choose_engine("analytic", model, adam)


def test_least_squares_is_the_exact_optimum():
    data = make_synthetic_regression(num_samples=5000, num_features=8, noise_std=0.1)
    optimum = least_squares(data.X, data.y)
    A = torch.cat([data.X.double(), torch.ones(5000, 1, dtype=torch.float64)], 1)
    exact = torch.linalg.lstsq(A, data.y.double()).solution.view(-1)
    torch.testing.assert_close(optimum.w.double(), exact[:8], rtol=1e-5, atol=1e-6)
    assert optimum.loss == pytest.approx(mse(data.X, data.y, optimum.w, optimum.b), rel=1e-4)
    assert optimum.loss == pytest.approx(0.01, rel=0.1)
