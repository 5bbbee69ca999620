"""Logging over HTTP to a real `mlflow server` process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store, port: int) -> subprocess.Popen:
    """mlflow server over store, started the quick way (1 worker, no job runner); waits until
    it answers."""
    artifacts = store.root / "artifacts"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", store.uri,
            "--artifacts-destination", artifacts.as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, 9)
    pytest.fail("mlflow server did not answer within 90 s")


@pytest.fixture
def server(store):
    """The URL of a real mlflow server over the test's store."""
    port = free_port()
    process = start_server(store, port)
    yield f"http://127.0.0.1:{port}"
    os.killpg(process.pid, 15)
    process.wait(timeout=30)


def test_parallel_sweep_through_the_server(store, server):
    store.train(
        "-m", "trainer.seed=1,2,3,4,5,6,7,8", "trainer.epochs=2", "tracking=server",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        MLFLOW_TRACKING_URI=server,
    )  # fmt: skip
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("linreg")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("linreg.sweep") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 9 and len(children) == 8
    assert parent.info.status == "FINISHED"
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 2
    assert "comparison.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "parameters.json" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    # The server wrote into the same sqlite store the embedded default would use.
    assert len(store.runs()) == 9


def test_parallel_sweep_on_a_fresh_embedded_store(fresh_store):
    fresh_store.train(
        "-m", "trainer.seed=1,2,3,4,5,6,7,8", "trainer.epochs=2",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    runs = fresh_store.all_runs()
    assert len(runs) == 9 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.experiment_id for r in runs} == {
        fresh_store.client.get_experiment_by_name("linreg").experiment_id
    }
