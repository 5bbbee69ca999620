"""One MLflow parent run per Hydra multirun; every job's run is its child.

The sweep's process checks the sweep, creates the store, the experiment and the parent run
before any job starts (new sqlite stores and experiments must not be created by racing workers),
and hands their ids to the jobs through the environment, which every Hydra launcher passes on
to its workers. A signal to the sweep's process creates the sweep's stop file: jobs not started
yet do not start, running ones end KILLED at their next step, wherever they run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from linreg_lab import build, signals
from linreg_lab.config.errors import ENV_SAID_FILE, EXIT_USER_ERROR, exit_on_user_error
from linreg_lab.sweep.check import (
    as_job,
    check_launcher,
    check_sweep,
    job_environment,
    swept_overrides,
    task_overrides,
)
from linreg_lab.sweep.compose_once import compose_each_job_once
from linreg_lab.sweep.preflight import preflight
from linreg_lab.sweep.reuse import DataReuse
from linreg_lab.tracking import FAILED, Run, Store, TrackingError
from linreg_lab.tracking.report import TAG_REUSED
from linreg_lab.tracking.store import mask_secrets
from linreg_lab.tracking.tags import TAG_SWEEP

ENV_PARENT_RUN_ID = "LINREG_PARENT_RUN_ID"
ENV_EXPERIMENT_ID = "LINREG_EXPERIMENT_ID"
ENV_SWEEP_PID = "LINREG_SWEEP_PID"
ENV_STOP_FILE = "LINREG_SWEEP_STOP_FILE"  # exists once the sweep is interrupted
ENV_SWEEP_HOST = "LINREG_SWEEP_HOST"
ENV_FINISHED_FILE = "LINREG_SWEEP_FINISHED_FILE"  # job key -> [run id, objective], JSON
ENV_REUSED_FILE = "LINREG_SWEEP_REUSED_FILE"  # the run ids jobs took instead of training
ENV_REPLICATES_FILE = "LINREG_SWEEP_REPLICATES_FILE"  # configuration key, objective: per job
LOST_FILE = ".linreg-lost"  # in the sweep's folder: numbers of jobs a launcher lost (SLURM)
# (ENV_SAID_FILE stays set after the sweep: its own last error is weighed against it.)
ENV_NAMES = (ENV_PARENT_RUN_ID, ENV_EXPERIMENT_ID, ENV_SWEEP_PID, ENV_STOP_FILE, ENV_SWEEP_HOST,
             ENV_FINISHED_FILE, ENV_REUSED_FILE, ENV_REPLICATES_FILE)  # fmt: skip
# Launchers (hydra/launcher choices) whose jobs run in the sweep's own process: they share its
# MLflow helper, so the sweep need not wait for the parent run's id before they start.
IN_PROCESS_LAUNCHERS = {"basic", "vectorized"}
log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """What lives across a sweep's jobs in the sweep's own process."""

    store: Store
    parent: Run
    parent_run_id: object  # what its jobs name the parent by: its id, or its handle in here
    stop_file: Path
    reuse: DataReuse = field(default_factory=DataReuse)
    ran_to_its_end: bool = False
    # The jobs check_sweep validated before the sweep started, each as its set of overrides.
    checked: frozenset = frozenset()


_current: Sweep | None = None


def current() -> Sweep | None:
    """The sweep this process runs, if it is the sweep's own process."""
    return _current


def checked(job_config: DictConfig) -> bool:
    """Whether this job (its task overrides as typed: a ${...} in them unresolved, as
    check_sweep saw them) was validated when this process's sweep started: a launcher need
    not validate it again."""
    return _current is not None and frozenset(task_overrides(job_config)) in _current.checked


def sweep_name(config: DictConfig) -> str:
    preset = OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)
    overrides = task_overrides(config)
    name = " ".join(o for o in overrides if not o.startswith("experiment="))
    return f"sweep {preset or ''} {name}".replace("  ", " ").strip()


class SweepCallback(Callback):
    """Opens the parent run at on_multirun_start; ends it at on_multirun_end (or finish())."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """The sweep starts whole, or the command stops here: Hydra would turn an error raised
        in a callback into a warning and run every job as a lone run (no check, no parent)."""
        try:
            self._start(config)
        except Exception as error:  # a user's error is a SystemExit(2) already
            text = " ".join(mask_secrets(error).split()) or type(error).__name__
            print(f"linreg-train: error: the sweep could not start: {text}", file=sys.stderr,
                  flush=True)  # fmt: skip
            sys.exit(EXIT_USER_ERROR)  # a parent already made ends FAILED at the command's end

    def _start(self, config: DictConfig) -> None:
        global _current

        if GlobalHydra.instance().is_initialized():
            compose_each_job_once(GlobalHydra.instance().config_loader())
        with exit_on_user_error(), job_environment(config):  # hydra.job.env_set, as jobs see it
            check_launcher(config)
            _check_sweeper(config)
            jobs = check_sweep(config)
            with as_job(config, 0):  # e.g. tracking.run_name=job${hydra:job.num}
                tracking = build.tracking(config)
        store = Store.open(tracking)
        overrides = task_overrides(config)
        node = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        sweep_params = OmegaConf.to_container(node, resolve=False) if node is not None else None
        launcher = str(OmegaConf.select(config, "hydra.runtime.choices.hydra/launcher") or "")
        parent = store.start_run(
            sweep_name(config),
            tags={
                TAG_SWEEP: "true",
                "linreg.sweep_dir": str(Path(config.hydra.sweep.dir).absolute()),
                "linreg.launcher": launcher,
            },
        )
        params = {f"sweep.override.{i}": o for i, o in enumerate(overrides)}
        if sweep_params:
            params.update({f"sweep.params.{k}": v for k, v in sweep_params.items()})
        parent.log_params(params)
        stop_file = Path(config.hydra.sweep.dir).absolute() / ".linreg-stop"
        stop_file.unlink(missing_ok=True)  # an earlier sweep's, in the same folder
        if launcher in IN_PROCESS_LAUNCHERS:
            # The jobs share this process's MLflow helper, which knows the handles: the sweep
            # starts while MLflow opens.
            _current = Sweep(store, parent, parent.handle, stop_file)
            fixed, _ = swept_overrides(config)
            _current.checked = frozenset(frozenset([*fixed, *job]) for job, _ in jobs)
        else:  # workers need the ids themselves
            with exit_on_user_error():
                _current = Sweep(store, parent, parent.id, stop_file)
                os.environ[ENV_PARENT_RUN_ID] = parent.id
                os.environ[ENV_EXPERIMENT_ID] = store.experiment_id
        os.environ[ENV_SWEEP_PID] = str(os.getpid())
        os.environ[ENV_SWEEP_HOST] = socket.gethostname()
        os.environ[ENV_STOP_FILE] = str(stop_file)
        stop_file.with_name(LOST_FILE).unlink(missing_ok=True)
        said = stop_file.with_name(".linreg-said")
        said.unlink(missing_ok=True)
        os.environ[ENV_SAID_FILE] = str(said)
        signals.on_signal(_stop_the_jobs)
        store.announce("MLflow parent run {run_id}: " + sweep_name(config), parent)
        reuse = _current.reuse if launcher in IN_PROCESS_LAUNCHERS else DataReuse()
        with exit_on_user_error(), job_environment(config):
            lines, stable = preflight(jobs, reuse)
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        if stable:
            parent.log_params(stable)
        _note_finished_jobs(config, store, stop_file)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # Ended by linreg-train itself right after (finish), where a failing store can be
        # reported as one line and an exit code: Hydra would only warn about an error here.
        if _current is not None:
            _current.ran_to_its_end = True


def _check_sweeper(config: DictConfig) -> None:
    """hydra/sweeper=optuna: its settings, search space and storage (sweep.study)."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if target.startswith("hydra_plugins.linreg_optuna_sweeper."):
        from linreg_lab.sweep import study

        done = study.check(config, task_overrides(config))
        if done is not None:  # a finished study: no parent run, nothing to compare
            print(f"linreg-train: {done}", file=sys.stderr, flush=True)
            sys.exit(0)


def _note_finished_jobs(config: DictConfig, store: Store, stop_file: Path) -> None:
    """For a re-run: the experiment's finished jobs, in a file its jobs read (any launcher)."""
    import json

    finished = stop_file.with_name(".linreg-finished.json")
    reused = stop_file.with_name(".linreg-reused")
    reused.unlink(missing_ok=True)
    os.environ[ENV_REUSED_FILE] = str(reused)
    replicates = stop_file.with_name(".linreg-replicates")
    replicates.unlink(missing_ok=True)
    os.environ[ENV_REPLICATES_FILE] = str(replicates)
    rerun = OmegaConf.select(config, "sweep.rerun_finished", default=False)
    with exit_on_user_error():
        jobs = {} if rerun else store.finished_jobs()
    finished.parent.mkdir(parents=True, exist_ok=True)
    finished.write_text(json.dumps(jobs))
    os.environ[ENV_FINISHED_FILE] = str(finished)


def _stop_the_jobs(signum: int) -> None:
    """In the signal handler: forbid new jobs and stop running ones, on any launcher or host
    that shares the sweep's folder."""
    if _current is not None:
        _current.stop_file.parent.mkdir(parents=True, exist_ok=True)
        _current.stop_file.touch()


def finish(failure: str | None) -> None:
    """Compare the children, then end the parent: FINISHED only if every child finished.

    failure: why the sweep ended before its end, unless Hydra said it ran to its end. Raises
    TrackingError when the store itself failed."""
    global _current
    if _current is None:
        return
    sweep, _current = _current, None
    if sweep.ran_to_its_end:
        failure = None
    lost_file = sweep.stop_file.with_name(LOST_FILE)
    lost = sorted(set(lost_file.read_text().split())) if lost_file.exists() else []
    if lost and not failure:  # ran to its end, without some of its jobs
        failure = f"{len(lost)} jobs did not run to their end (#{', #'.join(lost[:10])})"
    sweep.reuse.clear()  # no job is left to reuse the data
    signals.forget_hooks()
    for name in ENV_NAMES:
        os.environ.pop(name, None)
    sweep.stop_file.unlink(missing_ok=True)
    reused_file = sweep.stop_file.with_name(".linreg-reused")
    reused = reused_file.read_text().split() if reused_file.exists() else []
    if reused:
        sweep.parent.set_tags({TAG_REUSED: ",".join(dict.fromkeys(reused))})
    received = signals.received()
    interrupted = signals.signal_name(received) if received else None
    try:
        sweep.store.finish_sweep(sweep.parent.id, failure, interrupted)
    except TrackingError as error:  # the user hears why; the parent ends FAILED if it can
        with contextlib.suppress(Exception):
            sweep.parent.end(FAILED, str(error)[:500])
        raise
    except Exception as error:  # the parent must still be ended
        log.error("could not compare the sweep's runs: %s", error)
        try:
            sweep.parent.end(FAILED, str(error)[:500])
            sweep.store.sync()
        except Exception as again:
            log.error("could not end the sweep's parent run: %s", again)
