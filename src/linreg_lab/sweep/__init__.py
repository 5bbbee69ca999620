"""Sweeps: Hydra's multirun with one MLflow parent run, checked before it starts.

callback.py is the Hydra callback (parent run, pre-check, interruption); check.py checks every
job's settings before any run exists; reuse.py keeps the last dataset for the next job;
grouping.py decides which jobs the vectorized launcher trains in one pass. job() tells a job
what its sweep passes it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

from linreg_lab import signals
from linreg_lab.sweep import callback
from linreg_lab.sweep.reuse import DataReuse
from linreg_lab.tracking import Store, TrackingSettings


@dataclass
class Job:
    """What a sweep job receives from its sweep: where to record, where data comes from."""

    store: Store
    parent_run_id: object
    data_source: DataReuse
    in_sweep_process: bool  # False: a launcher's worker process, on this host or another

    def run_arguments(self) -> dict:
        """run_experiment's keyword arguments for this job."""
        return {
            "store": self.store,
            "parent_run_id": self.parent_run_id,
            "data_source": self.data_source,
            # A worker's writes must be in the store before it reports the job done.
            "wait": not self.in_sweep_process,
        }


_worker_reuse: DataReuse | None = None  # a worker's own, across the jobs it runs
_finished: tuple[tuple, dict[str, list]] | None = None  # the file as read: (its identity, jobs)


def finished_run(key: str) -> tuple[str, float] | None:
    """(run id, objective) of a FINISHED run of the same job in the sweep's experiment, from
    before this sweep started (none when sweep.rerun_finished=true). The sweep's file is read
    once per sweep: a later sweep in the same process (or folder) writes a new one."""
    global _finished
    import json

    path = os.environ.get(callback.ENV_FINISHED_FILE)
    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    identity = (path, stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else (path,)
    if _finished is None or _finished[0] != identity:
        try:
            _finished = (identity, json.loads(open(path).read()) if stat else {})
        except (OSError, ValueError):
            _finished = (identity, {})
    found = _finished[1].get(key)
    return (found[0], float(found[1])) if found else None


def job_value(objective: float, plain: dict) -> float:
    """What a sweep's job returns to the sweeper (Optuna's objective): its configuration's
    mean over the replicates run so far (replicate_mean)."""
    from linreg_lab.tracking.params import configuration_key

    return replicate_mean(configuration_key(plain), objective)


def replicate_mean(config_key: str, objective: float) -> float:
    """What a job returns to the sweeper: the mean objective of its configuration's runs in
    this sweep so far, this job's included (replicates differ only by seeds: the comparison's
    rows); inf once one of them did not finish, as the comparison ranks such a configuration
    last. Jobs on any launcher or host share the sweep's file, one appended line each."""
    import math
    import statistics

    path = os.environ.get(callback.ENV_REPLICATES_FILE)
    if not path:
        return objective
    try:
        with open(path, "a") as replicates:  # one short line: appends do not interleave
            replicates.write(f"{config_key} {objective!r}\n")
        with open(path) as replicates:
            values = [_value(line) for line in replicates if line.startswith(config_key + " ")]
    except OSError:  # the sweep's folder is gone: this job's own value
        return objective
    values = [v for v in values if v is not None]  # a line torn by another host's append
    if not values or not all(math.isfinite(v) for v in values):
        return math.inf
    return statistics.fmean(values)


def _value(line: str) -> float | None:
    try:
        return float(line.split()[1])
    except (IndexError, ValueError):
        return None


def note_reused(run_id: str) -> None:
    """Say to the sweep that a job took run_id instead of training (its comparison lists it)."""
    path = os.environ.get(callback.ENV_REUSED_FILE)
    if path:
        with open(path, "a") as reused:  # one short line: appends do not interleave
            reused.write(run_id + "\n")


def job(tracking: TrackingSettings) -> Job | None:
    """The sweep this process runs a job of, or None when it runs no sweep.

    A job also stops (signals.check) once the sweep's stop file exists."""
    global _worker_reuse
    stop_file = os.environ.get(callback.ENV_STOP_FILE)
    if stop_file is None:
        return None
    signals.stop_when_exists(stop_file)
    sweep = callback.current()
    if sweep is not None and os.environ.get(callback.ENV_SWEEP_PID) == str(os.getpid()):
        return Job(sweep.store, sweep.parent_run_id, sweep.reuse, in_sweep_process=True)
    if _worker_reuse is None:  # this worker's first job
        _worker_reuse = DataReuse()
        if os.environ.get(callback.ENV_SWEEP_HOST) == socket.gethostname():  # not on a cluster node
            sweep_pid = int(os.environ[callback.ENV_SWEEP_PID])
            threading.Thread(target=_outlive_no_sweep, args=(sweep_pid,), daemon=True).start()
    store = Store.open(tracking, os.environ[callback.ENV_EXPERIMENT_ID])
    return Job(store, os.environ[callback.ENV_PARENT_RUN_ID], _worker_reuse, False)


def finish(failure: str | None) -> None:
    """End this process's sweep, if one is open: its parent run gets the comparison."""
    callback.finish(failure)


# How long a worker whose sweep is gone waits for its job to end KILLED before it exits.
_ORPHAN_GRACE_SECONDS = 10.0


def _outlive_no_sweep(sweep_pid: int) -> None:
    """In a launcher's worker: once the sweep's process is gone (SIGKILL, a crash), stop the
    running job (its run ends KILLED) and end this worker, which its launcher cannot do now."""
    import psutil

    try:
        started = psutil.Process(sweep_pid).create_time()
    except psutil.Error:
        return  # gone already, or not ours to watch: the stop file still stops this job
    while True:
        try:
            if psutil.Process(sweep_pid).create_time() != started:  # the pid was reused
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(1.0)
    signals.request_stop(signal.SIGTERM)
    time.sleep(_ORPHAN_GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)  # its MLflow helper writes what it was sent, then ends
