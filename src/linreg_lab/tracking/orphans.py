"""Runs left RUNNING by a process that died without ending them (SIGKILL, power loss).

The rule: a RUNNING run of this project whose linreg.host tag is this host, and whose
linreg.pid process no longer exists (or is a newer process that reused the pid), is marked
FAILED with a linreg.failure tag saying so. Runs from other hosts are never touched: their
owner may still be alive.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

import psutil

from linreg_lab.tracking import records
from linreg_lab.tracking.tags import FAILED, TAG_HOST, TAG_PID

if TYPE_CHECKING:  # this module runs in the MLflow helper; importers need no mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Run


def owner_alive(pid: int, run_start_ms: int) -> bool:
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return created <= run_start_ms / 1000 + 1  # a process started after the run reused the pid


def close_dead_runs(client: MlflowClient, runs: list[Run], status: str, why: str) -> list[str]:
    """End the RUNNING runs among runs whose owner process on this host is gone."""
    host = socket.gethostname()
    closed = []
    for run in runs:
        pid = run.data.tags.get(TAG_PID, "")
        if run.info.status != "RUNNING" or run.data.tags.get(TAG_HOST) != host:
            continue
        if not pid.isdigit() or owner_alive(int(pid), run.info.start_time):
            continue
        reason = f"process {pid} on {host} ended without closing this run ({why})"
        records.end_run(client, run.info.run_id, status, reason)
        closed.append(run.info.run_id)
    return closed


def fail_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark this host's dead RUNNING runs in the experiment FAILED; returns their ids."""
    runs = client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{socket.gethostname()}'",
        max_results=1000,
    )
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return close_dead_runs(client, runs, FAILED, f"killed or crashed; found at {when}")
