"""The engines: recovered parameters, agreement between engines, seeds, exact least squares."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import threading
from collections import Counter

import numba
import numpy as np
import pytest
import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.engines import EngineError, analytic, choose_engine, fit
from linreg_lab.engines.kernels import permutation
from linreg_lab.engines.least_squares import least_squares, mse
from linreg_lab.engines.orders import batch_orders, seeded_orders
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.model import init_linear


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
    for engine, path in [("autograd", None), ("analytic", "true"), ("analytic", "false")]:
        model, _, used = train(
            data, optimizer, engine=engine, batch_size=batch_size, epochs=2, compiled=path or "auto"
        )  # the analytic engine's two paths
        results[(used, path)] = params(model)
    reference = results[("autograd", None)]
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
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    model, history, _ = train(data, batch_size=500, epochs=200, optimizer=sgd)
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


def test_least_squares_gives_the_same_bits_on_any_number_of_threads():
    """Chunks of rows summed on the run's threads, added in the chunks' order."""
    data = make_synthetic_regression(num_samples=100_000, num_features=20, true_w=None)
    threads = torch.get_num_threads()
    try:
        optima = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            optima.append(least_squares(data.X, data.y))
    finally:
        torch.set_num_threads(threads)
    for optimum in optima[1:]:
        assert torch.equal(optimum.theta, optima[0].theta) and optimum.loss == optima[0].loss
        assert torch.equal(optimum.gram, optima[0].gram)


def test_losses_from_the_normal_equations_match_a_pass_over_the_data():
    data = make_synthetic_regression(num_samples=20_000, num_features=30, true_w=None)
    optimum = least_squares(data.X, data.y)
    generator = torch.Generator().manual_seed(3)
    columns = []
    for scale in (0.0, 1e-3, 0.1, 10.0, 1e4):  # at the optimum, near it, far, diverging
        w = optimum.w + scale * torch.randn(30, generator=generator)
        b = optimum.b - scale
        expected = mse(data.X, data.y, w, b)
        assert optimum.loss_of(w, b) == pytest.approx(expected, rel=2e-6)
        columns.append((torch.cat([w, torch.tensor([b])]), expected))
    theta = torch.stack([c for c, _ in columns], dim=1)
    assert optimum.losses(theta).tolist() == pytest.approx([e for _, e in columns], rel=2e-6)


def test_losses_stay_exact_when_the_features_are_far_from_zero_mean():
    """The sums' y'y - theta'X'y cancels to a few bits at a feature mean of 1000 (2% off)."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(20_000, 5, generator=generator) + 1000
    y = X @ torch.arange(1.0, 6.0) + 0.5 + 0.01 * torch.randn(20_000, generator=generator)
    optimum = least_squares(X, y.view(-1, 1))
    A = torch.cat([X.double(), torch.ones(20_000, 1, dtype=torch.float64)], 1)
    for scale in (0.0, 1e-6, 1e-2):
        theta = (optimum.theta + scale).float().double()  # what a float32 model holds
        exact = float((A @ theta - y.double()).square().mean())
        assert optimum.loss_of(theta[:5].float(), float(theta[5])) == pytest.approx(exact, rel=1e-6)
    assert optimum.loss == pytest.approx(1e-4, rel=0.05)


def test_engines_agree_at_large_n_with_the_cached_shuffle_and_prefetch(monkeypatch):
    # 70 000 samples: batch_orders uses shuffle.permutation, the kernel prefetches rows.
    data = make_synthetic_regression(num_samples=70_000, num_features=5)
    sgd = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.5)
    results = [
        params(train(data, sgd, engine=engine, batch_size=1000, epochs=2, compiled="true")[0])
        for engine in ("autograd", "analytic")
    ]
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sgd", SGD_VARIANTS, ids=str)
def test_engines_agree_when_each_batch_is_split_between_threads(sgd, monkeypatch):
    # The parallel loop large data takes, forced onto small data.
    monkeypatch.setattr(analytic, "_PARALLEL_MIN_BYTES", 0)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = analytic.kernels().usable_threads(2)
        assert analytic._kernel_threads(1, 500) == two
        assert analytic._kernel_threads(1, 16) == 1  # small batches stay on one thread
        data = make_synthetic_regression(num_samples=6000, num_features=5)
        optimizer = functools.partial(torch.optim.SGD, **sgd)
        results = [
            params(train(data, optimizer, engine=e, batch_size=500, epochs=2, compiled="true")[0])
            for e in ("autograd", "analytic")
        ]
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


def _fit_large_batches(data) -> torch.Tensor:
    """The compiled loop with each batch split between two threads (where the process may)."""
    analytic._PARALLEL_MIN_BYTES = 0
    torch.set_num_threads(2)
    return params(train(data, batch_size=500, epochs=2, compiled="true")[0])


def _check_trains_alike(data, expected, queue):
    try:
        torch.testing.assert_close(_fit_large_batches(data), expected, rtol=1e-5, atol=1e-6)
        queue.put("ok")
    except BaseException as error:
        queue.put(repr(error))


def test_a_forked_process_trains_too(monkeypatch):
    # numba's OpenMP threads are not a forked child's (a launcher's worker forked after a run):
    # the child trains serially, to the same parameters (up to rounding).
    monkeypatch.setattr(analytic, "_PARALLEL_MIN_BYTES", analytic._PARALLEL_MIN_BYTES)
    previous = torch.get_num_threads()
    data = make_synthetic_regression(num_samples=70_000, num_features=5)  # the compiled shuffle
    try:
        expected = _fit_large_batches(data)  # the parent's threads have run
    finally:
        torch.set_num_threads(previous)
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    child = fork.Process(target=_check_trains_alike, args=(data, expected, queue))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and queue.get(timeout=5) == "ok"


def test_more_threads_than_cores_train_the_same_parameters():
    # Waiting threads yield their core to the ones they wait for (not spin out a time slice).
    from linreg_lab.engines.thread_team import sgd_steps_on_threads

    data = make_synthetic_regression(num_samples=20_000, num_features=5)
    X, y = analytic.compiled_arrays(data.X, data.y)
    order = permutation(20_000, seed=1)
    thetas = []
    for threads in (1, (os.cpu_count() or 1) + 2):
        theta, buf = np.zeros(6, np.float32), np.zeros(6, np.float32)
        sgd_steps_on_threads(
            X, y, order, 0, 20_000, 64, theta, buf, False, 0.05, 0.5, 0, 0, 0, threads
        )
        thetas.append(theta)
    np.testing.assert_allclose(thetas[1], thetas[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(thetas[0][:5], data.true_w.numpy(), atol=0.01)


def test_a_failing_thread_stops_its_team_and_its_error_reaches_the_caller(monkeypatch):
    from linreg_lab.engines import kernels as sgd_kernels
    from linreg_lab.engines.thread_team import sgd_steps_on_threads

    real = sgd_kernels.sgd_steps_share

    def failing_for_thread_2(*args):
        if args[14] == 2:  # the thread argument
            raise RuntimeError("thread 2 failed")
        return real(*args)

    monkeypatch.setattr(sgd_kernels, "sgd_steps_share", failing_for_thread_2)
    data = make_synthetic_regression(num_samples=5000, num_features=5)
    X, y = analytic.compiled_arrays(data.X, data.y)
    order = permutation(5000, seed=3)
    theta, buf = np.zeros(6, np.float32), np.zeros(6, np.float32)
    threads_before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="thread 2 failed"):
        sgd_steps_on_threads(X, y, order, 0, 5000, 500, theta, buf, False, 0.05, 0, 0, 0, 0, 3)
    # Threads 0 and 1 left the barrier: none of the team is left (others may have ended).
    assert set(threading.enumerate()) <= threads_before
    assert not theta.any()  # and applied no half-summed gradient


def test_a_thread_that_fails_to_start_does_not_leave_the_others_waiting():
    from linreg_lab.engines.kernels import sgd_steps_share

    data = make_synthetic_regression(num_samples=2000, num_features=5)
    X, y = analytic.compiled_arrays(data.X, data.y)
    order = np.arange(2000, dtype=np.int32)
    theta, buf = np.zeros(6, np.float32), np.zeros(6, np.float32)
    shares = np.zeros((2, 2, 32), np.float32)
    arrivals = np.array([0, 1], np.int64)  # thread 1 never comes, and says so
    hyper = (0.01, 0.0, 0.0, 0.0, False)
    loss, _ = sgd_steps_share(
        X, y, order, 0, 2000, 100, theta, buf, False, *hyper, 0, 2, shares, arrivals
    )
    assert arrivals[0] == 1 and np.isnan(loss)  # thread 0 left at the first barrier
    assert not theta.any()  # and applied no half-summed gradient


def test_batch_orders_are_permutations_reproducible_from_the_seed():
    for n in (10, 1 << 16, 300_000):  # torch.randperm below 2^16, shuffle.permutation above
        first = list(batch_orders(n, 2, True, torch.Generator().manual_seed(3)))
        again = list(batch_orders(n, 2, True, torch.Generator().manual_seed(3)))
        assert all(torch.equal(torch.sort(o).values, torch.arange(n)) for o in first)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        assert not torch.equal(first[0], first[1])


def test_seeded_orders_are_batch_orders_of_a_fresh_generator():
    # fit() takes its orders here: kept for small runs, drawn afresh for large ones.
    for n, shuffle in [(1000, True), (1000, False), (70_000, True)]:
        expected = list(batch_orders(n, 3, shuffle, torch.Generator().manual_seed(7)))
        for _ in range(2):  # the second call of a small run is served from the cache
            got = list(seeded_orders(n, 3, shuffle, 7))
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert seeded_orders(1000, 3, True, 7) is seeded_orders(1000, 3, True, 7)
    assert not torch.equal(seeded_orders(1000, 3, True, 8)[0], seeded_orders(1000, 3, True, 7)[0])


def test_cached_shuffle_is_uniform():
    # 200 draws of each of the 24 orders expected: 4.3 standard deviations either side.
    counts = Counter(tuple(permutation(4, seed)) for seed in range(4_800))
    assert len(counts) == 24 and all(140 < c < 260 for c in counts.values())
    # Many buckets: where index 0 lands is uniform over the positions.
    n = 1 << 17
    positions = [int(np.flatnonzero(permutation(n, seed) == 0)[0]) for seed in range(400)]
    assert 0.4 * n < np.mean(positions) < 0.6 * n


def test_a_failing_callback_still_leaves_the_trained_parameters_in_the_model():
    data = make_synthetic_regression()
    model = init_linear(torch.nn.Linear(3, 1))

    def stop(epoch, loss, w, b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, functools.partial(torch.optim.SGD, lr=0.03), data, TrainerSettings(), stop)
    assert torch.linalg.vector_norm(params(model)[:3] - data.true_w) < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("engine", ["analytic", "autograd"])
def test_cuda_matches_cpu(engine):
    data = make_synthetic_regression(num_samples=5000, num_features=5)
    sgd = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)
    cpu, _, _ = train(data, sgd, engine=engine, device="cpu", batch_size=100)
    gpu, _, used = train(data, sgd, engine=engine, device="cuda", batch_size=100)
    assert used == engine and gpu.weight.device.type == "cuda"
    torch.testing.assert_close(params(gpu).cpu(), params(cpu), rtol=1e-4, atol=1e-5)


def test_short_runs_skip_loading_the_compiled_kernel():
    cpu = torch.device("cpu")
    assert analytic.uses_blas(torch.device("cuda"), 10**9, 10**12)
    assert not analytic.uses_blas(cpu, analytic._KERNEL_LOAD_IN_STEPS, 1000)
    assert not analytic.uses_blas(cpu, 10_000, 10**7 * 101)  # one epoch at N 10^7, D 100
    loaded = analytic._kernels_loaded  # once loaded, every run uses it
    assert analytic.uses_blas(cpu, 300, 12_000) is not loaded  # the default experiment
    assert analytic.uses_blas(cpu, 10**9, 10**12, compiled="false")
    assert not analytic.uses_blas(cpu, 300, 12_000, compiled="true")


def test_a_large_run_after_a_small_one_gets_the_machines_threads_back():
    from linreg_lab.engines import settings

    before = torch.get_num_threads()
    trainer = TrainerSettings()
    try:
        torch.set_num_threads(trainer.num_threads(1000, 3))  # a small job of a sweep
        assert torch.get_num_threads() == 1
        assert trainer.num_threads(10**6, 100) == settings._STARTING_THREADS
    finally:
        torch.set_num_threads(before)
    assert TrainerSettings(threads=3).num_threads(1000, 3) == 3


def test_divergence_is_caught_when_float32_overflows_before_the_float64_loss():
    from linreg_lab.engines.least_squares import least_squares
    from linreg_lab.engines.monitor import Diverged, EpochMonitor

    data = make_synthetic_regression(num_samples=100)
    monitor = EpochMonitor(data, least_squares(data.X, data.y))
    huge = torch.full((3,), 3e30)  # finite float32, but its norm overflows
    with pytest.raises(Diverged, match="epoch 2: error/w_l2=inf"):
        monitor.measure(2, 1e61, huge, 1.0, loss=1e61)
    with pytest.raises(Diverged, match="train/last_batch_loss=inf"):
        monitor.measure(3, float("inf"), torch.ones(3), 1.0, loss=5.0)


def test_the_cached_shuffle_does_not_depend_on_the_thread_count():
    two = min(2, numba.config.NUMBA_NUM_THREADS)
    for n in (70_000, 1_000_003):  # one chunk of indices; several, split between threads
        alone, shared = permutation(n, 11, threads=1), permutation(n, 11, threads=two)
        assert np.array_equal(alone, shared)
        assert np.array_equal(np.sort(alone), np.arange(n))
    assert not np.array_equal(permutation(70_000, 11), permutation(70_000, 12))


def test_the_kept_dataset_is_freed_before_a_different_one_is_built(monkeypatch):
    """Even when a finished job's frames still hold it in a reference cycle."""
    import weakref

    from omegaconf import OmegaConf

    from linreg_lab.sweep import reuse

    def cfg(num_samples):
        return OmegaConf.create({"dataset": {"num_samples": num_samples, "seed": 0}})

    def build(cfg, trainer):
        data = make_synthetic_regression(num_samples=cfg.dataset.num_samples)
        return data, least_squares(data.X, data.y)

    monkeypatch.setattr(reuse, "_COLLECT_MIN_BYTES", 0)  # large data only, in use
    kept = reuse.DataReuse()
    first, again = kept.get(cfg(1000), TrainerSettings(), build), None
    x = weakref.ref(first[0].X)
    cycle = {"data": first}
    cycle["self"] = cycle  # what a caught exception's traceback frames do
    del first, cycle
    again = kept.get(cfg(1000), TrainerSettings(), lambda *_: pytest.fail("built again"))
    assert again[0].X is x()  # the same config: reused
    del again
    kept.get(cfg(1000), TrainerSettings(threads=2), build)  # threads differ: built anew
    assert x() is None


def test_targets_packed_beside_the_features_train_as_separate_arrays(monkeypatch):
    from linreg_lab.data import packed_rows

    data = make_synthetic_regression(num_samples=5000, num_features=7)
    rows = packed_rows(data.X, data.y)
    assert rows is not None and rows.shape == (5000, 8) and rows.flags.c_contiguous
    assert np.array_equal(rows[:, :7], data.X.numpy()) and np.array_equal(rows[:, 7], data.y[:, 0])
    X, y = data.X.contiguous(), data.y.contiguous()
    assert packed_rows(X, y) is None and packed_rows(data.X[:, 1:], data.y) is None
    fitted = []
    for features, targets in ((data.X, data.y), (X, y)):
        settings = TrainerSettings(epochs=2, batch_size=16, seed=5, compiled="true")
        torch.manual_seed(0)
        model = init_linear(torch.nn.Linear(7, 1))
        sgd = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.5)
        fit(model, sgd, dataclasses.replace(data, X=features, y=targets), settings, lambda *a: None)
        fitted.append(torch.cat([model.weight.detach().view(-1), model.bias.detach()]))
    assert torch.equal(fitted[0], fitted[1])  # the same arithmetic on the same rows


@pytest.mark.parametrize(
    "num_samples,num_features",
    [(1, 1), (5, 2), (1000, 3), (4099, 5), (270_000, 3), (2 * 4096 + 3, 100), (3000, 1000)],
)
def test_data_for_a_seed_is_as_drawn_in_whole_chunks(num_samples, num_features):
    """The packed buffer is filled in small parts; a seed still gives the values of drawing
    each chunk of 2^18 rows at once, X's values then the noise's (as before the packing)."""
    data = make_synthetic_regression(None, 3.0, num_features, num_samples, 0.01, seed=4)
    generator = torch.Generator().manual_seed(4)
    w = torch.randn(num_features, generator=generator)
    for start in range(0, num_samples, 1 << 18):
        rows = min(1 << 18, num_samples - start)
        X = torch.empty(rows, num_features).normal_(generator=generator)
        noise = torch.randn(X.shape[0], 1, generator=generator)
        y = torch.mv(X, w).view(-1, 1).add_(noise, alpha=0.01).add_(3.0)
        assert torch.equal(data.X[start : start + X.shape[0]], X)
        assert torch.equal(data.y[start : start + X.shape[0]], y)
    assert torch.equal(data.true_w, w)
