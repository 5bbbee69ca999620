"""Runs left RUNNING by a process that died without ending them (SIGKILL, power loss).

The rule: a RUNNING run of this project whose linreg.host tag is this host, and whose
linreg.pid process no longer exists (or is a newer process that reused the pid), is marked
FAILED with a linreg.failure tag saying so. A run trained in a SLURM job (tag
linreg.slurm_job) by this user is dead, on any host, once SLURM's squeue no longer lists its
job as pending or running (unless its process on this host is alive). Other runs from other
hosts are never touched: their owner may still be alive.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import psutil

from linreg_lab.tracking import records
from linreg_lab.tracking.tags import FAILED, TAG_HOST, TAG_PID, TAG_SLURM_JOB, TAG_USER

if TYPE_CHECKING:  # this module runs in the MLflow helper; importers need no mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Run


def owner_alive(pid: int, run_start_ms: int) -> bool:
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return created <= run_start_ms / 1000 + 1  # a process started after the run reused the pid


# SLURM job states in which the job's processes may still write (squeue's %T).
SLURM_LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                     "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_HOLD"}  # fmt: skip


def slurm_states(
    job_ids: list[str], field: str = "%T", states: str = "all"
) -> dict[str, str] | None:
    """squeue's state of each listed job still known to SLURM (finished ones are listed for a
    few minutes, then absent); None where squeue cannot answer (not installed, no cluster).
    field: another of squeue's fields instead (%r: why a job waits); states: only the jobs in
    these states (squeue -t, e.g. PD)."""
    squeue = shutil.which("squeue")
    if squeue is None or not job_ids:
        return None if squeue is None else {}
    try:
        out = subprocess.run(
            [squeue, "-h", "-r", "-t", states, "-o", f"%i {field}", "-j", ",".join(job_ids)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        states[job] = state
    return states


def close_dead_runs(client: MlflowClient, runs: list[Run], status: str, why: str) -> list[str]:
    """End the RUNNING runs among runs whose owner is gone: a process on this host, or a SLURM
    job anywhere."""
    host, user = socket.gethostname(), getpass.getuser()
    running = [run for run in runs if run.info.status == "RUNNING"]
    # squeue answers for this cluster and, where jobs are private, for this user's jobs only.
    slurm_jobs = {
        run.data.tags[TAG_SLURM_JOB]
        for run in running
        if TAG_SLURM_JOB in run.data.tags and run.data.tags.get(TAG_USER) == user
    }
    states = slurm_states(sorted(slurm_jobs)) if slurm_jobs else None
    closed = []
    for run in running:
        pid, slurm_job = run.data.tags.get(TAG_PID, ""), run.data.tags.get(TAG_SLURM_JOB)
        here = run.data.tags.get(TAG_HOST) == host and pid.isdigit()
        if here and owner_alive(int(pid), run.info.start_time):
            continue  # whatever SLURM says, its process is alive
        if slurm_job in slurm_jobs and states is not None:
            state = states.get(slurm_job, "")
            if state in SLURM_LIVE_STATES:
                continue
            ended = f"ended {state}" if state else "is no longer known to SLURM"
            reason = f"SLURM job {slurm_job} {ended} without closing this run ({why})"
        elif here:
            reason = f"process {pid} on {host} ended without closing this run ({why})"
        else:
            continue
        records.end_run(client, run.info.run_id, status, reason)
        closed.append(run.info.run_id)
    return closed


def fail_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark this host's dead RUNNING runs in the experiment FAILED; returns their ids."""
    runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return close_dead_runs(client, runs, FAILED, f"killed or crashed; found at {when}")
