"""256 tutorial-size configs on SLURM: packed into a few array tasks against one task each.

Needs a SLURM cluster (tests/cluster/slurm-up brings up a one-node one, as root) and starts its
own `mlflow server` (1 worker) over a fresh sqlite store for each sweep. Not part of `make
bench` (it needs the cluster): `python bench/slurm.py [--jobs 256] [--per-task 128 1]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.end_to_end import Stores

BIN = Path(sys.executable).parent


def _server(store: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", (store / "artifacts").as_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return process, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not answer")


def sweep(stores: Stores, jobs: int, per_task: int) -> dict:
    store = stores.fresh()
    server, url = _server(store)
    try:
        lrs = ",".join(f"{0.001 * (i + 1):.3f}" for i in range(jobs))
        started = time.perf_counter()
        subprocess.run(
            [str(BIN / "linreg-train"), "-m", f"optimizer.lr={lrs}", "hydra/launcher=slurm",
             "tracking=server", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
             f"hydra.launcher.jobs_per_task={per_task}", f"hydra.sweep.dir={store / 'sweep'}"],
            cwd=store, check=True, capture_output=True, text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": url},
        )  # fmt: skip
        seconds = time.perf_counter() - started
        from mlflow import MlflowClient

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("linreg")
        runs = client.search_runs([experiment.experiment_id], max_results=10000)
        finished = sum(r.info.status == "FINISHED" for r in runs)
        if finished != jobs + 1:
            raise RuntimeError(f"{finished} of {jobs} + 1 runs FINISHED")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    tasks = -(-jobs // per_task)
    return {"jobs": jobs, "jobs_per_task": per_task, "tasks": tasks, "seconds": seconds,
            "ms_per_job": 1000 * seconds / jobs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=256)
    parser.add_argument("--per-task", type=int, nargs="+", default=[128, 1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        stores = Stores(Path(folder))
        rows = [sweep(stores, args.jobs, per_task) for per_task in args.per_task]
    for row in rows:
        what = f"{row['jobs']} jobs, {row['jobs_per_task']} per task ({row['tasks']} array tasks)"
        print(f"{what}: {row['seconds']:.1f} s, {row['ms_per_job']:.0f} ms per job", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
