"""Signals at random moments of training: the run ends KILLED with its epochs, never torn.

The handlers only set a flag (linreg_lab.signals); training stops where it checks the flag. A
signal that raised in the middle of a pipe write to the MLflow helper used to leave the run
RUNNING with `UnpicklingError` on screen: these tries land anywhere, writes included.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Store
from tests.test_failures import start_in_group

pytestmark = pytest.mark.slow

# Epochs of ~5 ms, a metric flush every second: a signal can land in training, in a flush, in
# the check of the store.
LONG = ["dataset.num_samples=5000", "trainer.epochs=1000000", "trainer.batch_size=10"]
# Every kind of try (each signal, to the process alone and to its group) runs in `make test`,
# each at one random moment; LINREG_SIGNAL_SEEDS=3 tries each at 3 moments (12 tries a test).
SEEDS = int(os.environ.get("LINREG_SIGNAL_SEEDS", "1"))
TRIES = [
    (signum, to_group, seed)
    for signum in (signal.SIGINT, signal.SIGTERM)
    for to_group in (False, True)
    for seed in range(SEEDS)
]


def _one_try(store: Store, args: list[str], signum: int, to_group: bool, seed: int):
    process = start_in_group(store, *args)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # training has begun once an epoch is stored
            runs = store.all_runs() if os.path.exists(store.root / "mlflow.db") else []
            if any("train/loss" in r.data.metrics for r in runs):
                break
            time.sleep(0.2)
        time.sleep(random.Random(seed).uniform(0.0, 2.0))
        if to_group:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
        code = process.wait(timeout=60)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return code, out, err


def _tries(tmp_path, template_store, args):
    def run(index_try):
        index, (signum, to_group, seed) = index_try
        root = tmp_path / f"try{index}"
        root.mkdir()
        shutil.copy(template_store, root / "mlflow.db")
        store = Store(root)
        return store, signum, _one_try(store, args, signum, to_group, seed + 10 * index)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(run, enumerate(TRIES)))


def _assert_killed_cleanly(store: Store, signum: int, result, children_of_sweep: bool = False):
    code, out, err = result
    name = signal.Signals(signum).name
    assert code == 128 + signum, (code, err[-2000:])
    for text in ("Traceback", "UnpicklingError", "MLflow:"):
        assert text not in err, err[-3000:]
    runs = store.all_runs()
    assert runs and all(r.info.status == "KILLED" for r in runs), [
        (r.info.status, r.data.tags.get("linreg.failure")) for r in runs
    ]
    trained = [r for r in runs if r.data.tags.get("linreg.sweep") != "true"]
    assert len(trained) == 1
    (run,) = trained
    assert name in run.data.tags["linreg.failure"]
    history = store.client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 1  # the epochs before the signal are kept
    if children_of_sweep:
        assert run.data.tags.get("mlflow.parentRunId")


def test_signals_at_random_moments_of_a_run(tmp_path, template_store):
    for store, signum, result in _tries(tmp_path, template_store, LONG):
        _assert_killed_cleanly(store, signum, result)


def test_signals_at_random_moments_of_a_sweep_job(tmp_path, template_store):
    args = ["-m", *LONG, "trainer.seed=1,2"]
    for store, signum, result in _tries(tmp_path, template_store, args):
        _assert_killed_cleanly(store, signum, result, children_of_sweep=True)
        runs = store.all_runs()
        assert len(runs) == 2  # the parent and the one job: no job started after the signal
