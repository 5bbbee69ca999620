"""hydra/launcher=vectorized records what the basic launcher records, run for run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from linreg_lab.sweep.grouping import group_jobs
from tests.test_config import make

SWEEP = ["-m", "optimizer.lr=0.01,0.1,20", "optimizer.momentum=0,0.9", "trainer.epochs=3"]


def by_overrides(store):
    runs = [r for r in store.runs() if r.data.tags.get("linreg.sweep") != "true"]
    return {r.data.tags["linreg.overrides"]: r for r in runs}


@pytest.mark.slow
def test_same_runs_as_the_basic_launcher(tmp_path, template_store):
    from tests.conftest import Store

    stores = {}
    for launcher in ("basic", "vectorized"):
        root = tmp_path / launcher
        root.mkdir()
        (root / "mlflow.db").write_bytes(template_store.read_bytes())
        stores[launcher] = Store(root)
        stores[launcher].train(*SWEEP, f"hydra/launcher={launcher}")
    basic, vectorized = by_overrides(stores["basic"]), by_overrides(stores["vectorized"])
    assert sorted(basic) == sorted(vectorized) and len(basic) == 6
    for key, expected in basic.items():
        got = vectorized[key]
        assert got.info.status == expected.info.status, key
        assert got.info.run_name == expected.info.run_name
        differs = {"tracking.uri"}  # the two stores
        assert {k: v for k, v in got.data.params.items() if k not in differs} == {
            k: v for k, v in expected.data.params.items() if k not in differs
        }
        assert set(got.data.metrics) == set(expected.data.metrics)
        for metric in expected.data.metrics:
            ours = stores["vectorized"].client.get_metric_history(got.info.run_id, metric)
            theirs = stores["basic"].client.get_metric_history(expected.info.run_id, metric)
            assert [m.step for m in ours] == [m.step for m in theirs], (key, metric)
            for a, b in zip(ours, theirs):
                if math.isfinite(b.value):
                    assert a.value == pytest.approx(b.value, rel=2e-3, abs=1e-6), (key, metric)
        artifacts = {a.path for a in stores["vectorized"].client.list_artifacts(got.info.run_id)}
        expected_artifacts = {
            a.path for a in stores["basic"].client.list_artifacts(expected.info.run_id)
        }
        assert artifacts == expected_artifacts
    diverged = [r for r in vectorized.values() if r.info.status == "FAILED"]
    assert len(diverged) == 2 and all("diverged" in r.data.tags["linreg.failure"] for r in diverged)
    # every job still has its own Hydra output folder
    job_dirs = list(Path(stores["vectorized"].root, "multirun").glob("*/*/*/.hydra/overrides.yaml"))
    assert len(job_dirs) == 6


def test_grouping_follows_from_the_configs():
    configs = [
        make("optimizer.lr=0.1"),
        make("optimizer.lr=0.2", "optimizer.momentum=0.9"),
        make("optimizer.lr=0.1", "trainer.batch_size=32"),  # other batches: another pass
        make("optimizer=adam"),  # not the analytic engine's: alone
        make("optimizer.lr=0.3", "model.weight_std=0.1"),
        make("optimizer.lr=0.3", "dataset.seed=3"),  # other data: another pass
    ]
    assert sorted(map(sorted, group_jobs(configs))) == [[0, 1, 4], [2], [3], [5]]
    assert OmegaConf.select(configs[0], "optimizer.lr") == 0.1


@pytest.mark.slow
def test_a_cheap_group_trains_in_passes_and_every_job_is_recorded(store):
    """A group whose training is cheap runs as passes of 8 jobs (the MLflow helper writes one
    pass while the next is set up); each job still gets its run, params, epochs and folder."""
    lrs = [round(0.01 + 0.002 * i, 4) for i in range(12)]
    result = store.command("-m", "optimizer.lr=" + ",".join(map(str, lrs)),
                         "hydra/launcher=vectorized")  # fmt: skip
    assert "Launching 12 jobs as 2 passes: 8, 4" in result.stdout + result.stderr
    children = [r for r in store.runs() if r.data.tags.get("linreg.sweep") != "true"]
    assert sorted(float(r.data.params["optimizer.lr"]) for r in children) == lrs
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["linreg.engine"] == "vectorized"
        history = store.client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
        artifacts = {a.path for a in store.client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "overrides.txt", "parameters.json"} <= artifacts
    assert len(list(Path(store.root, "multirun").glob("*/*/*/.hydra/config.yaml"))) == 12


def test_a_job_naming_its_hydra_number_runs_alone_and_finishes(store):
    """A ${hydra:job.num} in a job's settings resolves only in the job's own Hydra config: the
    launcher cannot plan such a job with others (it crashed here), so it runs as the basic
    launcher runs it, named after its own number."""
    result = store.command("-m", "tracking.run_name=job${hydra:job.num}", "optimizer.lr=0.01,0.1",
                           "trainer.epochs=1", "hydra/launcher=vectorized")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Launching 2 jobs as 2 passes: 1, 1" in result.stdout + result.stderr
    runs = store.runs()
    (parent,) = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["job0", "job1"]
    assert {r.info.status for r in children} == {"FINISHED"} == {parent.info.status}


def test_only_cheap_groups_are_split():
    from hydra_plugins.linreg_vectorized_launcher.vectorized_launcher import _pipelined

    group = list(range(20))
    assert [len(p) for p in _pipelined(group, [make()] * 20)] == [8, 8, 4]
    big = make("dataset.num_samples=1000000", "dataset.num_features=100")
    assert _pipelined(group, [big] * 20) == [group]  # its one pass is worth more
    assert _pipelined(group, [make("dataset=diabetes")] * 20) == [group]  # size unknown
    assert _pipelined(list(range(5)), [make()] * 5) == [list(range(5))]
    assert _pipelined(group, [make()] * 20, pass_size=0) == [group]  # the switch: off
    assert [len(p) for p in _pipelined(group, [make()] * 20, pass_size=16)] == [16, 4]


@pytest.mark.slow
def test_a_bad_pass_size_is_refused_before_any_run(store):
    result = store.command("-m", "optimizer.lr=0.1,0.2", "hydra/launcher=vectorized",
                         "hydra.launcher.pass_size=-1", check=False)  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "pass_size" in line]
    assert len(lines) == 1 and "hydra.launcher.pass_size=-1" in lines[0] and ">= 0" in lines[0]
    experiment = store.client.get_experiment_by_name("linreg")
    assert experiment is None or not store.runs()


@pytest.mark.parametrize("path", ["compiled", "compiled-threads", "blas"])
def test_vectorized_engine_matches_separate_fits(path, monkeypatch):
    import functools

    import torch

    from linreg_lab.data import make_synthetic_regression
    from linreg_lab.engines import analytic, fit, sgd_hyper, vectorized
    from linreg_lab.engines.orders import batch_orders
    from linreg_lab.engines.settings import TrainerSettings
    from linreg_lab.engines.vectorized import train_vectorized
    from linreg_lab.model import init_linear

    compiled = "false" if path == "blas" else "true"
    if path == "compiled-threads":  # the models split between two threads (2 and 3 models)
        two = analytic.kernels().usable_threads(2)
        monkeypatch.setattr(vectorized, "_model_threads", lambda models, work: two)
    data = make_synthetic_regression(num_samples=3000, num_features=4)
    settings = TrainerSettings(epochs=2, batch_size=7, seed=3, compiled=compiled)
    optimizers = [
        functools.partial(torch.optim.SGD, lr=0.01),
        functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.01),
        functools.partial(torch.optim.SGD, lr=0.02, momentum=0.5, dampening=0.3),
        functools.partial(torch.optim.SGD, lr=0.02, momentum=0.8, nesterov=True),
        functools.partial(torch.optim.SGD, lr=50.0),  # diverges, alone
    ]
    separate = []
    for optimizer in optimizers:
        torch.manual_seed(settings.seed)
        model = init_linear(torch.nn.Linear(4, 1))
        fit(model, optimizer, data, settings, lambda *args: None)
        separate.append(torch.cat([model.weight.detach().view(-1), model.bias.detach()]))
    torch.manual_seed(settings.seed)
    start = init_linear(torch.nn.Linear(4, 1))
    theta = torch.cat([start.weight.detach().view(-1), start.bias.detach()])
    theta = theta.unsqueeze(1).repeat(1, len(optimizers)).contiguous()
    epochs_seen = []
    train_vectorized(
        theta, [sgd_hyper(o) for o in optimizers], data.X, data.y,
        batch_orders(3000, 2, True, torch.Generator().manual_seed(settings.seed)),
        settings.batch_size, lambda epoch, losses, th: epochs_seen.append(epoch), settings.epochs,
        compiled,
    )  # fmt: skip
    assert epochs_seen == [1, 2]
    for k, expected in enumerate(separate[:-1]):
        torch.testing.assert_close(theta[:, k], expected, rtol=1e-4, atol=1e-5)
    assert not torch.isfinite(theta[:, -1]).all() and not torch.isfinite(separate[-1]).all()


@pytest.mark.slow
def test_sigterm_in_a_group_ends_it_killed_keeping_a_divergence(store):
    import os
    import signal
    import time

    from tests.test_failures import start_in_group

    process = start_in_group(
        store, "-m", "dataset.num_samples=20000", "trainer.epochs=100000",
        "optimizer.lr=50,0.01,0.02", "hydra/launcher=vectorized",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not store.client.get_experiment_by_name("linreg") or not [
            r for r in store.runs() if r.info.status == "FAILED"
        ]:  # the lr=50 member diverged at its first epoch; the others train on
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 143
    finally:
        process.kill()
    _, stderr = process.communicate()
    assert "Traceback" not in stderr
    runs = by_overrides(store)
    statuses = {key.split("optimizer.lr=")[1].split()[0]: r.info.status for key, r in runs.items()}
    assert statuses == {"50": "FAILED", "0.01": "KILLED", "0.02": "KILLED"}
    diverged = next(r for r in runs.values() if r.info.status == "FAILED")
    assert "diverged" in diverged.data.tags["linreg.failure"]
    parent = next(r for r in store.runs() if r.data.tags.get("linreg.sweep") == "true")
    assert parent.info.status == "KILLED"
