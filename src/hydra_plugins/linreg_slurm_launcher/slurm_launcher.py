"""hydra/launcher=slurm: Hydra's submitit SLURM launcher, with three changes a sweep needs.

- **Cheap jobs packed into array tasks.** `jobs_per_task` sweep jobs run one after another in
  one SLURM array task (one Python start, one MLflow helper, the dataset loaded once); each is
  still its own Hydra job, folder and MLflow child run. `auto`: ceil(jobs / array_parallelism),
  as many tasks as may run at once and no more.
- **Stops that reach the jobs.** Ctrl-C (or SIGTERM) of the sweep cancels its array with
  scancel, so nothing stays queued; each task turns SLURM's SIGTERM (scancel, the time limit)
  into a stop at its job's next step: the run ends KILLED, saying why. submitit's own handler
  would ignore SIGTERM, and the run would stay RUNNING until SIGKILL.
- **A wait that sees jobs die.** A task is done when its result file exists, or when squeue no
  longer lists it as alive (cancelled, killed on its node, out of time): its jobs then count
  as not finished, the rest of the sweep goes on, and the sweep's end closes any run they
  left RUNNING (tracking/orphans.py asks squeue). submitit asks sacct, which clusters without
  accounting do not have; its wait would never end there.

Everything else (the executor, sbatch options, the folder) is Hydra's submitit plugin's.
"""

import logging
import math
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from linreg_lab import signals

log = logging.getLogger(__name__)
_POLL_S = 0.5  # result files
_SQUEUE_EVERY_S = 3.0  # squeue, for tasks that ended without one
_GRACE_S = 5.0  # a task gone from squeue gets this long for its result file to appear
_GRACE_COMPLETED_S = 60.0  # one SLURM says COMPLETED: a shared file system may be slow
_LOST = "not run to its end"  # JobReturn.task_name of a job whose task ended without it
_CANCEL_WAIT_S = 90.0  # after scancel, how long the sweep waits for its tasks' results
_DRAIN_WAIT_S = 60.0  # then, how long it waits for them to leave squeue
_SAY_PENDING_EVERY_S = 60.0  # how often the sweep says which of its tasks still wait, and why


@dataclass
class PackedSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.linreg_slurm_launcher.slurm_launcher.PackedSlurmLauncher"
    jobs_per_task: Any = "auto"  # sweep jobs per array task: an int, or auto


ConfigStore.instance().store(
    group="hydra/launcher", name="linreg_slurm", node=PackedSlurmConf, provider="linreg-lab"
)


class PackedTask:
    """What one array task runs: its sweep jobs, one after another (pickled by submitit)."""

    def __init__(self, launcher: "PackedSlurmLauncher") -> None:
        self.launcher = launcher

    def __call__(self, jobs: list[tuple]) -> list[JobReturn]:
        from linreg_lab.tracking.tags import slurm_job_id

        # Replace submitit's handlers, which ignore SIGTERM: a stop, at the job's next step.
        signals.record_signals(signal.SIGTERM, signal.SIGUSR2)
        job = slurm_job_id()
        signals.describe(signal.SIGTERM, f"SLURM stopped job {job} (scancel, or its time limit)")
        signals.describe(signal.SIGUSR2, f"SLURM job {job} is near its time limit (SIGUSR2)")
        returns = []
        for params in jobs:
            if signals.stop_requested():  # SLURM stopped this task: the rest does not start
                returns.append(_not_finished(params, f"{_LOST}: SLURM stopped task {job}"))
                continue
            try:  # Hydra's: compose, run_job, one folder; its errors stay the job's
                returns.append(self.launcher(*params))
            except BaseException as error:  # noqa: BLE001 (sys.exit(2) of a user error too)
                log.error(f"job #{params[2]} ended: {_first_line(error)}")
                why = f"{_LOST}: job #{params[2]}: {_first_line(error)}"
                returns.append(_not_finished(params, why))
        return returns


class PackedSlurmLauncher(SlurmLauncher):
    def __init__(self, jobs_per_task: Any = "auto", **params: Any) -> None:
        super().__init__(**params)
        self.jobs_per_task = jobs_per_task

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        executor = self.make_executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        params = []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            params.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                           Singleton.get_state()))  # fmt: skip
        if signals.stop_requested():  # a later batch (Optuna) after Ctrl-C: submit nothing
            return [_not_finished(p, "the sweep was stopped before it was submitted")
                    for p in params]  # fmt: skip
        per_task = self._per_task(len(params))
        tasks = [params[i : i + per_task] for i in range(0, len(params), per_task)]
        submitted = executor.map_array(PackedTask(self), tasks)
        array = submitted[0].job_id.split("_")[0]
        log.info(f"SLURM array job {array}: {len(params)} jobs in {len(tasks)} tasks of up to "
                 f"{per_task}; logs in {sweep_dir / '.submitit' / array}")  # fmt: skip
        try:
            returns = _wait(array, submitted, tasks)
        except BaseException:  # nothing of the sweep may go on running without it
            subprocess.run(["scancel", array], check=False)
            raise
        lost = [p[2] for task, got in zip(tasks, returns) for p, r in zip(task, got)
                if r.task_name and r.task_name.startswith(_LOST)]  # fmt: skip
        if lost:  # the sweep's parent cannot end FINISHED: jobs of it never ran to their end
            from linreg_lab.sweep.callback import LOST_FILE

            with open(sweep_dir / LOST_FILE, "a") as file:
                file.write("".join(f"{number}\n" for number in lost))
        return [r for task in returns for r in task]

    def _per_task(self, jobs: int) -> int:
        wanted = self.jobs_per_task
        if wanted in (None, "auto"):
            parallel = max(1, int(self.params.get("array_parallelism") or 1))
            return max(1, math.ceil(jobs / parallel))
        try:
            wanted = int(wanted)
        except (TypeError, ValueError):
            wanted = 0
        if wanted < 1:
            raise ValueError(
                f"hydra.launcher.jobs_per_task={self.jobs_per_task!r}: not allowed; use a "
                "positive number or auto"
            )
        return wanted

    def make_executor(self):
        """submitit's executor, built as Hydra's submitit launcher builds it."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            **({"slurm_max_num_timeout": self.params["max_num_timeout"]}
               if "max_num_timeout" in self.params else {}),
        )  # fmt: skip
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            key if key in base else f"slurm_{key}": value
            for key, value in self.params.items() if key not in init_keys
        })  # fmt: skip
        return executor


def _wait(array: str, submitted: list, tasks: list[list[tuple]]) -> list[list[JobReturn]]:
    """Each task's JobReturns, once each task is done or gone; a stop cancels the array."""
    from linreg_lab.tracking.orphans import SLURM_LIVE_STATES, slurm_states

    returns: dict[int, list[JobReturn]] = {}
    gone_since: dict[int, float] = {}
    cancelled_at = None
    last_squeue = said_pending = time.monotonic()
    folder = submitted[0].paths.folder.parent
    while len(returns) < len(submitted):
        now = time.monotonic()
        if signals.stop_requested() and cancelled_at is None:
            log.warning(f"stopping the sweep: scancel {array}")
            subprocess.run(["scancel", array], check=False)
            cancelled_at = now
        _refresh(folder)
        for index, job in enumerate(submitted):
            if index not in returns and job.paths.result_pickle.exists():
                returns[index] = _results(job, tasks[index])
        pending = [i for i in range(len(submitted)) if i not in returns]
        if pending and now - last_squeue >= _SQUEUE_EVERY_S:
            last_squeue = now
            states = slurm_states([submitted[i].job_id for i in pending])
            for index in pending if states is not None else []:  # None: squeue did not answer
                state = states.get(submitted[index].job_id, "")
                # A task that COMPLETED wrote its results: a shared file system may show them late.
                grace = _GRACE_COMPLETED_S if state == "COMPLETED" else _GRACE_S
                if state in SLURM_LIVE_STATES:
                    gone_since.pop(index, None)
                elif now - gone_since.setdefault(index, now) >= grace:
                    returns[index] = _lost(submitted[index], tasks[index], state or "gone")
        if pending and cancelled_at is None and now - said_pending >= _SAY_PENDING_EVERY_S:
            said_pending = now
            _say_pending(array, [submitted[i].job_id for i in pending])
        if cancelled_at is not None and now - cancelled_at > _CANCEL_WAIT_S:
            for index in pending:
                returns.setdefault(index, _lost(submitted[index], tasks[index], "cancelled"))
        time.sleep(_POLL_S)
    # Nothing of the sweep left in squeue when it returns, not even a task that wrote its
    # results and is exiting, or one COMPLETING after scancel.
    ids, since = [job.job_id for job in submitted], time.monotonic()
    while time.monotonic() - since < _DRAIN_WAIT_S:
        live = slurm_states(ids)
        if live is None or not set(live.values()) & SLURM_LIVE_STATES:
            break
        time.sleep(_POLL_S)
    _refresh(folder)
    for index, job in enumerate(submitted):  # results that arrived after all, late
        if job.paths.result_pickle.exists() and returns[index][0].task_name.startswith(_LOST):
            returns[index] = _results(job, tasks[index])
    return [returns[i] for i in range(len(submitted))]


def _say_pending(array: str, ids: list[str]) -> None:
    """One line for the tasks of ids still waiting in the queue, with squeue's reasons (a busy
    cluster: Priority, Resources; QOS or account limits): nothing else says why a sweep waits."""
    from linreg_lab.tracking.orphans import slurm_states

    reasons = [r for r in (slurm_states(ids, field="%r", states="PD") or {}).values() if r]
    if reasons:
        counts = {reason: reasons.count(reason) for reason in dict.fromkeys(reasons)}
        why = ", ".join(f"{n} {reason}" for reason, n in counts.items())
        log.info(f"SLURM array job {array}: {len(reasons)} task(s) still waiting in the queue "
                 f"({why}; squeue -j {array} shows them)")  # fmt: skip


def _refresh(folder: Path) -> None:
    """Make a shared file system show new files (as submitit does: a no-op chmod)."""
    try:
        folder.chmod(folder.stat().st_mode)
    except OSError:
        pass


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [repr(error)])[0]


def _results(job, task: list[tuple]) -> list[JobReturn]:
    """What the array task's jobs returned: its SLURM task 0's (rank 0 of a job of several
    tasks; the others return nothing to keep, and one that died writes no result: submitit's
    job.results() would wait for it without end where sacct does not answer)."""
    try:
        return job.task(0).results()[0]
    except Exception as error:  # the task itself failed (not a job: run_job catches those)
        log.error(f"SLURM task {job.job_id} failed: {_first_line(error)}")
        return [_not_finished(params, f"{_LOST}: SLURM task {job.job_id} failed")
                for params in task]  # fmt: skip


def _lost(job, task: list[tuple], state: str) -> list[JobReturn]:
    numbers = ", ".join(f"#{params[2]}" for params in task)
    log.warning(f"SLURM task {job.job_id} ended {state} before its jobs {numbers} finished; "
                f"its log: {job.paths.stderr}")  # fmt: skip
    return [_not_finished(params, f"{_LOST}: SLURM task {job.job_id} ended {state}")
            for params in task]  # fmt: skip


def _not_finished(params: tuple, why: str) -> JobReturn:
    """A job that did not finish: its sweep goes on (its run, if any, ends KILLED or FAILED
    with the reason)."""
    ret = JobReturn(overrides=params[0], status=JobStatus.COMPLETED)
    ret.return_value = math.inf
    ret.task_name = why
    return ret
