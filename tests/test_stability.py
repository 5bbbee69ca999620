"""The learning rate a dataset allows: the exact full-batch bound, the minibatch estimate, and
what a sweep says before it starts, checked against real divergence."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.engines import fit
from linreg_lab.engines.least_squares import least_squares
from linreg_lab.engines.monitor import Diverged
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.engines.stability import curvature
from linreg_lab.model import init_linear


def _trains(
    data, lr: float, batch: int, epochs: int, momentum: float = 0.0, **sgd_settings
) -> bool:
    """Whether SGD at lr stays finite and ends below the loss it started from."""
    torch.manual_seed(0)
    model = init_linear(torch.nn.Linear(data.num_features, 1))
    start = _mse(model, data)
    sgd = functools.partial(torch.optim.SGD, lr=lr, momentum=momentum, **sgd_settings)
    losses = []
    try:
        fit(model, sgd, data, TrainerSettings(epochs=epochs, batch_size=batch),
            lambda epoch, loss, *_: losses.append(loss))  # fmt: skip
    except Diverged:
        return False
    end = _mse(model, data)
    return end == end and end < start  # NaN compares False


def _mse(model, data) -> float:
    w, b = model.weight.detach().view(-1).double(), float(model.bias.detach())
    return float((data.X.double() @ w + b - data.y.view(-1).double()).square().mean())


def test_the_curvature_is_the_normal_equations_spectrum():
    data = make_synthetic_regression()
    optimum = least_squares(data.X, data.y)
    c = curvature(optimum.gram, optimum.num_samples)
    A = np.c_[data.X.double().numpy(), np.ones(1000)]
    values = np.linalg.eigvalsh(A.T @ A / 1000)
    assert c.lambda_max == pytest.approx(values[-1], rel=1e-9)
    assert c.lambda_min == pytest.approx(values[0], rel=1e-9)
    assert c.critical_lr == pytest.approx(0.964, abs=0.002)  # the figure


def test_full_batch_gd_diverges_just_above_the_bound_and_not_below():
    data = make_synthetic_regression()
    optimum = least_squares(data.X, data.y)
    bound = curvature(optimum.gram, optimum.num_samples).full_batch_bound()
    assert _trains(data, 0.98 * bound, batch=1000, epochs=300)
    assert not _trains(data, 1.02 * bound, batch=1000, epochs=300)
    # Heavy ball moves it to (1 + momentum) times as far.
    bound_m = curvature(optimum.gram, optimum.num_samples).full_batch_bound(momentum=0.5)
    assert bound_m == pytest.approx(1.5 * bound)
    assert _trains(data, 0.97 * bound_m, batch=1000, epochs=600, momentum=0.5)
    assert not _trains(data, 1.03 * bound_m, batch=1000, epochs=600, momentum=0.5)


@pytest.mark.parametrize(
    "settings",
    [{"momentum": 0.5, "dampening": 0.5}, {"momentum": 0.5, "nesterov": True},
     {"weight_decay": 0.5}, {"momentum": 0.3, "nesterov": True, "weight_decay": 0.2},
     {"momentum": 0.3, "dampening": 0.2, "weight_decay": 0.2}],
    ids=["dampening", "nesterov", "weight-decay", "nesterov-weight-decay",
         "dampening-weight-decay"],
)  # fmt: skip
def test_the_full_batch_bound_holds_with_dampening_nesterov_and_weight_decay(settings):
    """README: 2(1 + m) / ((1 - d)(lambda_max(H) + weight_decay)), Nesterov's / (1 + 2m)."""
    data = make_synthetic_regression()
    optimum = least_squares(data.X, data.y)
    bound = curvature(optimum.gram, optimum.num_samples).full_batch_bound(**settings)
    assert _trains(data, 0.97 * bound, batch=1000, epochs=800, **settings)
    assert not _trains(data, 1.03 * bound, batch=1000, epochs=800, **settings)


def test_the_verdict_words():
    from linreg_lab.engines.stability import NEAR, Verdict, verdict

    assert Verdict(1.01, 1.0, 0.5).word == "will diverge"
    assert Verdict(0.99 * NEAR, 1.0, 1.0).word == "stable"
    assert Verdict(1.01 * NEAR, 1.0, 1.0).word == "may diverge"
    assert Verdict(0.4, 1.0, 0.5).word == "may diverge"  # above 70% of the minibatch estimate
    data = make_synthetic_regression()
    optimum = least_squares(data.X, data.y)
    c = curvature(optimum.gram, optimum.num_samples)
    assert verdict(c, {"_target_": "torch.optim.Adam", "lr": 5.0}, 10) is None  # not bounded
    said = verdict(c, {"lr": 0.8, "momentum": 0.0}, 1000)
    assert said.word == "may diverge" and said.batch_bound <= c.full_batch_bound()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("batch", [1, 10, 100])
def test_the_minibatch_estimate_brackets_measured_divergence(batch, momentum):
    """Well below the estimate SGD trains; well above it (still below the full-batch bound
    for batch 1 and 10) it diverges within 20 epochs."""
    data = make_synthetic_regression()
    optimum = least_squares(data.X, data.y)
    c = curvature(optimum.gram, optimum.num_samples)
    estimate = c.batch_bound(batch, momentum=momentum)
    assert _trains(data, 0.7 * estimate, batch=batch, epochs=20, momentum=momentum)
    assert not _trains(data, 1.4 * estimate, batch=batch, epochs=20, momentum=momentum)


@pytest.mark.slow
def test_a_sweep_names_the_jobs_that_will_diverge_before_it_starts(store):
    result = store.command(
        "-m", "optimizer.lr=0.1,0.8,1.2,2.0", "trainer.batch_size=1000", "trainer.epochs=300",
        "tracking.log_plots=false", check=False,
    )  # fmt: skip
    said = [x for x in result.stderr.splitlines() if "diverge" in x and "job #" in x]
    assert len(said) == 3, result.stderr
    assert "lr 0.8" in said[0] and said[0].endswith("may diverge"), said[0]
    assert all("will diverge" in x for x in said[1:]), said
    assert "lr 1.2" in said[1] and "lr 2" in said[2] and "0.964" in said[1]
    runs = store.runs()
    parent = next(r for r in runs if r.data.tags.get("linreg.sweep") == "true")
    assert float(parent.data.params["stability.lr_critical"]) == pytest.approx(0.964, abs=0.002)
    assert parent.data.params["stability.jobs_will_diverge"] == "2"
    children = {r.data.params["optimizer.lr"]: r for r in runs if r is not parent
                and "mlflow.parentRunId" in r.data.tags}  # fmt: skip
    assert children["0.8"].data.params["stability.verdict"] == "may diverge"
    for lr, child in children.items():
        verdict = child.data.params["stability.verdict"]
        diverged = "diverged" in child.data.tags.get("linreg.failure", "")
        assert (verdict == "will diverge") == (float(lr) > 0.964)
        if verdict == "may diverge":
            continue  # near the bound: it may or may not
        if verdict == "will diverge":
            assert diverged, lr  # every job it said will diverge did
        else:
            assert not diverged, lr  # none it called stable at full batch did
