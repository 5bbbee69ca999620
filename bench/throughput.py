"""Item 1: samples per second of a 3-epoch fit (the tutorial's job) at each batch size.

Every contender gets the same in-memory data and is timed from data to trained parameters, best
of a few repeats; one-time process costs (imports, loading the compiled kernel, the first
torch.optim.SGD's torch._dynamo import) are paid before timing. A process whose runs are all
short never loads the kernel (see analytic._KERNEL_LOAD_IN_STEPS): items 3 and 4 time that.
"""

from __future__ import annotations

import functools
import time
import warnings

import numpy as np
import torch

from bench.reference import tutorial_fit
from linreg_lab.data import RegressionData, make_synthetic_regression
from linreg_lab.engines import analytic, fit
from linreg_lab.engines.least_squares import mse
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.model import init_linear

EPOCHS = 3  # the tutorial's


def lr_for(num_features: int) -> float:
    """The tutorial's 0.03 at D 3; at D 100 a per-sample step of 2 lr |x|^2 needs a smaller lr."""
    return 0.03 if num_features <= 10 else 0.003


def best_of(job, min_seconds: float, max_repeats: int = 50) -> float:
    """The fastest of repeated runs of job(), repeating until min_seconds have been spent."""
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < max_repeats and (
        len(times) < 3 or time.perf_counter() - spent < min_seconds
    ):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return min(times)


def ours(data: RegressionData, batch_size: int, min_seconds: float) -> tuple[float, float]:
    """(samples/s, final train MSE) of linreg_lab's fit (engine=auto) on data."""
    settings = TrainerSettings(batch_size=batch_size, epochs=EPOCHS)
    sgd = functools.partial(torch.optim.SGD, lr=lr_for(data.num_features))
    model = init_linear(torch.nn.Linear(data.num_features, 1))

    def job() -> None:
        # fit trains the caller's model in place; re-initialising it costs ~1 us, so it stays in.
        with torch.no_grad():
            model.weight.normal_(0.0, 0.01)
            model.bias.zero_()
        fit(model, sgd, data, settings, lambda *_: None)

    job()  # warm-up: loads the compiled kernel
    seconds = best_of(job, min_seconds)
    final = mse(data.X, data.y, model.weight.detach().view(-1), float(model.bias.detach()))
    return data.num_samples * EPOCHS / seconds, final


def sklearn_sgd(data: RegressionData, min_seconds: float) -> tuple[float, float]:
    """(samples/s, final train MSE) of scikit-learn's SGDRegressor: batch 1, same lr, 3 epochs."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDRegressor

    # float64 as scikit-learn works in; converted before timing, so no conversion is counted.
    X, y = data.X.double().numpy(), data.y.view(-1).double().numpy()
    lr = lr_for(data.num_features)
    # Its squared_error loss is (p - y)^2 / 2: eta0 = 2 lr makes the same update as MSE with lr.
    make = functools.partial(
        SGDRegressor, loss="squared_error", penalty=None, alpha=0.0, learning_rate="constant",
        eta0=2 * lr, max_iter=EPOCHS, tol=None, shuffle=True, random_state=0,
    )  # fmt: skip
    fitted = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        seconds = best_of(lambda: fitted.append(make().fit(X, y)), min_seconds)
    model = fitted[-1]
    final = float(np.mean((X @ model.coef_ + model.intercept_[0] - y) ** 2))
    return data.num_samples * EPOCHS / seconds, final


def measure(
    shapes: list[tuple[int, int]], batches: list[int], min_seconds: float, reference_steps: int
) -> list[dict]:
    """One row per (N, D, batch); the reference runs at most reference_steps, extrapolated."""
    analytic.kernels()  # the one-time load, as after any long run

    torch.set_num_threads(1)  # what TrainerSettings.num_threads picks at these sizes
    rows = []
    for num_samples, num_features in shapes:
        data = make_synthetic_regression(
            num_samples=num_samples, num_features=None if num_features == 3 else num_features
        )
        peer, peer_mse = sklearn_sgd(data, min_seconds)
        for batch_size in batches:
            rate, final = ours(data, batch_size, min_seconds)
            ref = tutorial_fit(
                data.X, data.y, batch_size, lr_for(num_features), EPOCHS, reference_steps
            )
            rows.append(
                {
                    "N": num_samples, "D": num_features, "batch": batch_size,
                    "ours_samples_per_s": rate, "ours_final_mse": final,
                    "reference_samples_per_s": ref.samples_per_s,
                    "reference_steps_run": ref.steps_run, "reference_steps": ref.steps_total,
                    "sklearn_samples_per_s": peer, "sklearn_final_mse": peer_mse,
                    "x_reference": rate / ref.samples_per_s, "x_sklearn": rate / peer,
                }
            )  # fmt: skip
    return rows
