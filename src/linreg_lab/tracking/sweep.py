"""One MLflow parent run per Hydra multirun; every job's run is its child.

The parent process creates the store, the experiment and the parent run before any job starts
(new sqlite stores and experiments must not be created by racing workers), and hands their ids
to the jobs through the environment, which every Hydra launcher passes on to its workers.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from linreg_lab.interrupts import Interrupted, runs_open
from linreg_lab.tracking.tags import TAG_SWEEP

# Launchers whose jobs run in the sweep's own process (and so share its MLflow helper).
IN_PROCESS_LAUNCHERS = {
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.linreg_vectorized_launcher.vectorized_launcher.VectorizedLauncher",
}
ENV_PARENT_RUN_ID = "LINREG_PARENT_RUN_ID"
ENV_EXPERIMENT_ID = "LINREG_EXPERIMENT_ID"
ENV_SWEEP_PID = "LINREG_SWEEP_PID"
ENV_STOP_FILE = "LINREG_SWEEP_STOP_FILE"  # exists once the sweep is interrupted
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parent:
    run_id: str
    experiment_id: str


def current_parent() -> Parent | None:
    """The sweep's parent run when this process runs a multirun job, else None."""
    run_id = os.environ.get(ENV_PARENT_RUN_ID)
    experiment_id = os.environ.get(ENV_EXPERIMENT_ID)
    return Parent(run_id, experiment_id) if run_id and experiment_id else None


def stop_requested() -> bool:
    """True in a job of a sweep that was interrupted: the job must not start."""
    stop_file = os.environ.get(ENV_STOP_FILE)
    return bool(stop_file) and os.path.exists(stop_file)


def in_worker_process() -> bool:
    """True in a job that a launcher runs outside the sweep's own process."""
    pid = os.environ.get(ENV_SWEEP_PID)
    return bool(pid) and int(pid) != os.getpid()


def sweep_name(config: DictConfig) -> str:
    preset = OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)
    overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    name = " ".join(o for o in overrides if not o.startswith("experiment="))
    return f"sweep {preset or ''} {name}".replace("  ", " ").strip()


class MlflowSweepCallback(Callback):
    """Opens the parent run at on_multirun_start; ends it at on_multirun_end or at exit."""

    def __init__(self) -> None:
        self._store = None
        self._parent: Parent | None = None
        self._interrupted: str | None = None
        self._jobs_in_this_process = True

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from linreg_lab import build
        from linreg_lab.cli.errors import exit_on_user_error
        from linreg_lab.config.sweep_check import check_launcher, check_sweep
        from linreg_lab.launcher.compose_once import compose_each_job_once
        from linreg_lab.tracking.orphans import fail_orphaned_runs
        from linreg_lab.tracking.run import RunRecorder
        from linreg_lab.tracking.service import Store
        from linreg_lab.tracking.store import bind_experiment

        compose_each_job_once(GlobalHydra.instance().config_loader())
        with exit_on_user_error():
            check_launcher(config)
            check_sweep(config)
            tracking = build.tracking(config)
        self._store = Store.of(tracking)
        exp_ref = self._store.new_ref()
        self._store.post(bind_experiment, exp_ref, tracking)
        self._store.post(fail_orphaned_runs, exp_ref)
        overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        sweep_params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        launcher = str(config.hydra.launcher._target_)
        recorder = RunRecorder.start(
            self._store,
            exp_ref,
            sweep_name(config),
            tags={
                TAG_SWEEP: "true",
                "linreg.sweep_dir": str(config.hydra.sweep.dir),
                "linreg.launcher": launcher.rsplit(".", 1)[-1],
            },
        )
        params = {f"sweep.override.{i}": o for i, o in enumerate(overrides)}
        if sweep_params:
            params.update({f"sweep.params.{k}": v for k, v in sweep_params.items()})
        recorder.log_params(params)
        self._jobs_in_this_process = launcher in IN_PROCESS_LAUNCHERS
        if self._jobs_in_this_process:
            # The jobs share this process's MLflow helper, which knows the references: the
            # sweep starts while MLflow opens.
            self._parent = Parent(recorder.run_ref, exp_ref)
        else:  # workers need the ids themselves
            with exit_on_user_error():
                import linreg_lab.experiment  # noqa: F401  # the jobs' imports, meanwhile

                self._parent = Parent(recorder.run_id, self._store.resolve(exp_ref))
        os.environ[ENV_PARENT_RUN_ID] = self._parent.run_id
        os.environ[ENV_EXPERIMENT_ID] = self._parent.experiment_id
        os.environ[ENV_SWEEP_PID] = str(os.getpid())
        os.environ[ENV_STOP_FILE] = str(Path(config.hydra.sweep.dir).absolute() / ".linreg-stop")
        atexit.register(self._finish, "the sweep stopped before its end")
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        from linreg_lab.console import RUN_ID, print_with_run_id

        line = f"MLflow parent run {RUN_ID}: {sweep_name(config)}"
        self._store.post(print_with_run_id, line, self._parent.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from linreg_lab import dataset_cache

        dataset_cache.clear()  # the last job's data: no job is left to reuse it
        self._finish(None)

    def _on_signal(self, signum, frame) -> None:
        """Stop the sweep: workers end their runs KILLED, then this process unwinds."""
        if self._interrupted is None:
            self._interrupted = signal.Signals(signum).name
            # First forbid new jobs (any launcher, any host sharing the folder), then stop
            # the running ones.
            stop_file = Path(os.environ[ENV_STOP_FILE])
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.touch()
            stop_workers()
        if not self._jobs_in_this_process and not runs_open():
            # No run of this process to unwind (joblib may run jobs here, with n_jobs=1): end
            # the sweep here (it exits 128 + signum).
            # Unwinding through the launcher prints its traceback, and joblib's pool waits.
            _close_joblib_pool()
            self._finish("the sweep stopped before its end")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    def _finish(self, failure: str | None) -> None:
        """Compare the children, then end the parent: FINISHED only if every child finished."""
        if self._parent is None:
            return
        parent, self._parent = self._parent, None
        for name in (ENV_PARENT_RUN_ID, ENV_EXPERIMENT_ID, ENV_SWEEP_PID, ENV_STOP_FILE):
            os.environ.pop(name, None)
        from linreg_lab.tracking import writes
        from linreg_lab.tracking.report import finish_sweep

        if failure:  # not a normal end: let workers end their runs, then close what they left
            stop_workers()
        from linreg_lab.tracking.run import FAILED
        from linreg_lab.tracking.store import TrackingError

        try:
            self._store.call(finish_sweep, parent.run_id, failure, self._interrupted)
        except TrackingError:
            pass  # the store itself failed: a job has said so, and nothing can be written
        except Exception as error:  # the parent must still be ended
            log.error("could not compare the sweep's runs: %s", error)
            try:
                self._store.call(writes.end_run, parent.run_id, FAILED, str(error)[:500])
            except Exception as again:
                log.error("could not end the sweep's parent run: %s", again)
        if self._interrupted:
            # Launchers turn an interrupt into their own errors and exit 1; keep the
            # conventional 128 + signal, after flushing what was printed.
            from linreg_lab.tracking import service

            service.tracker().close()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signal.Signals[self._interrupted].value)


def stop_workers(timeout: float = 15.0) -> None:
    """SIGTERM this process's worker processes (joblib, submitit) and wait for them.

    Workers of some launchers ignore SIGINT; SIGTERM makes a job end its run KILLED.
    """
    import psutil

    from linreg_lab.tracking.service import is_helper

    this = psutil.Process()
    # Listed now: a worker's helper is no longer our descendant once its worker has exited.
    descendants = this.children(recursive=True)
    # MLflow helpers ignore SIGTERM: they write the runs' ends, then exit with their owner.
    helpers = [p for p in descendants if is_helper(_cmdline(p))]
    workers = [p for p in descendants if p not in helpers]
    ours = {child.pid for child in this.children()}  # our own helper is our child
    worker_helpers = [h for h in helpers if h.pid not in ours]
    for worker in workers:
        try:
            worker.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    # loky's resource tracker ignores SIGTERM by design and exits with its parent.
    jobs = [w for w in workers if "resource_tracker" not in " ".join(_cmdline(w))]
    psutil.wait_procs(jobs, timeout=timeout)
    # Then the workers' helpers, which write what their worker sent before it ended (a run's
    # FINISHED among it): the sweep's end would otherwise take those runs as abandoned.
    psutil.wait_procs(worker_helpers, timeout=timeout)


def _close_joblib_pool() -> None:
    """Close joblib's worker pool (its workers have ended), or its resource tracker warns of
    leaked semaphores and folders at exit."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None and hasattr(executor, "terminate"):
        try:
            executor.terminate(kill_workers=True)
        except Exception as error:  # only tidiness is lost
            log.debug("could not close joblib's pool: %s", error)


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []
