"""hydra/launcher=vectorized: a sweep's jobs that share data and batches train in one pass.

Jobs that differ only in per-model settings (learning rate, momentum, weight decay, ...,
initialisation) are grouped and trained as one vectorized model; each still gets its own MLflow
run, Hydra output folder with .hydra/ files, and return value. Other jobs run one by one, as
the basic launcher runs them.
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from linreg_lab.signals import Interrupted

log = logging.getLogger(__name__)


@dataclass
class VectorizedLauncherConf:
    _target_: str = (
        "hydra_plugins.linreg_vectorized_launcher.vectorized_launcher.VectorizedLauncher"
    )
    # A group whose training is cheap trains in passes of at most this many jobs, so that the
    # MLflow helper writes one pass's runs while the next is set up; 0: one pass per group.
    pass_size: int = 8


ConfigStore.instance().store(group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf)


class VectorizedLauncher(Launcher):
    def __init__(self, pass_size: int = 8) -> None:
        from linreg_lab.sweep.check import pass_size_problem

        if problem := pass_size_problem(pass_size):  # (linreg-train refuses it before this)
            sys.exit(problem)
        self.pass_size = pass_size
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        from linreg_lab.sweep.compose_once import compose_each_job_once

        compose_each_job_once(hydra_context.config_loader)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from linreg_lab.sweep.grouping import group_jobs

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(config):
                config.hydra.job.id = number
                config.hydra.job.num = number
            configs.append(config)

        plains: list[dict | None] = []
        # A job whose settings need its own Hydra config (a ${hydra:job.num}) cannot be
        # resolved here: it runs alone, as the basic launcher runs it.
        grouped = group_jobs(configs, plains)
        groups = [
            chunk
            for group in grouped
            for part in _finished_apart(group, configs, plains)
            for chunk in _pipelined(part, configs, self.pass_size)
        ]  # fmt: skip
        log.info(
            f"Launching {len(configs)} jobs as {len(groups)} passes: "
            + ", ".join(str(len(group)) for group in groups)
        )
        returns: dict[int, JobReturn] = {}
        for group in groups:
            task = self.task_function
            if len(group) > 1:
                try:
                    task = self._replay(group, configs, job_overrides, plains)
                except Interrupted as error:
                    # As a single job's task exits: the group's runs already ended KILLED.
                    sys.exit(error.exit_code)
            for index in group:
                returns[index] = run_job(
                    hydra_context=self.hydra_context,
                    task_function=task,
                    config=configs[index],
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[index] for index in range(len(configs))]

    @staticmethod
    def _replay(group, configs, job_overrides, plains) -> TaskFunction:
        """Train the group now; each job's task then reports its own share of the result."""
        from linreg_lab import build, console, sweep
        from linreg_lab.config.errors import exit_on_user_error
        from linreg_lab.experiment.group import train_group

        members = [configs[index] for index in group]
        overrides = [list(job_overrides[index]) for index in group]
        with exit_on_user_error():
            job = sweep.job(build.tracking(members[0]))
            arguments = {} if job is None else job.run_arguments()
            arguments.pop("wait", None)
            tags, hooks = _trials(members) if job is not None else (None, None)
            trained = train_group(
                members, overrides, plains=[plains[index] for index in group], tags=tags,
                on_epochs=hooks, **arguments,
            )  # fmt: skip
        outcomes = {id(cfg): outcome for cfg, outcome in zip(members, trained)}
        by_number = {cfg.hydra.job.num: outcomes[id(cfg)] for cfg in members}
        plain_by_number = {configs[i].hydra.job.num: plains[i] for i in group}

        def report(cfg: DictConfig) -> float:
            from hydra.core.hydra_config import HydraConfig

            job = HydraConfig.get().job
            outcome = by_number[job.num]
            console.job_line(
                f"job {job.num}: {' '.join(HydraConfig.get().overrides.task)}", outcome
            )
            return sweep.job_value(outcome.objective, plain_by_number[job.num])

        return report


def _trials(members) -> tuple[list[dict], list]:
    """hydra/sweeper=optuna's jobs (sweep.trial set): each member's trial tag and reporter,
    so that a pass drops the members whose trials are pruned and trains on with the rest."""
    tags, hooks = [], []
    for cfg in members:
        trial = OmegaConf.select(cfg, "sweep.trial", default=None)
        if trial is None:
            tags.append({})
            hooks.append(None)
            continue
        from linreg_lab.sweep.study import TAG_TRIAL, trial_reporter

        tags.append({TAG_TRIAL: str(trial)})
        hooks.append(trial_reporter(int(trial), int(cfg.trainer.epochs)))
    return tags, hooks


# A group whose whole training costs less than this many multiply-adds (epochs x N x (D + 1):
# ~10 ms) is cheap: split into passes (pass_size), the MLflow helper writes one pass's runs
# while the next one is set up, instead of idling until the whole group has been. A costlier
# group stays one pass: one pass over its data is what the launcher is for.
_CHEAP_WORK = 10**7


def _pipelined(group: list[int], configs: list[DictConfig], pass_size: int = 8) -> list[list[int]]:
    """group, in passes of pass_size jobs when its training is cheap, else whole."""
    work = _work(configs[group[0]])
    if pass_size == 0 or len(group) <= pass_size or work is None or work > _CHEAP_WORK:
        return [group]
    return [group[i : i + pass_size] for i in range(0, len(group), pass_size)]


def _work(cfg: DictConfig) -> int | None:
    """epochs x N x (D + 1) as the config states them; None where it does not say (a table)."""
    from linreg_lab.experiment.run import stated_size

    size, epochs = stated_size(cfg), OmegaConf.select(cfg, "trainer.epochs", default=None)
    if size is None or not isinstance(epochs, int):
        return None
    return epochs * size[0] * (size[1] + 1)


def _finished_apart(group: list[int], configs: list[DictConfig], plains) -> list[list[int]]:
    """A re-run sweep's jobs that FINISHED before run alone (each is skipped by its task),
    the rest as one group. A job alone already is left to its task, which checks itself."""
    from linreg_lab import sweep
    from linreg_lab.tracking.params import job_key

    if len(group) == 1:
        return [group]

    def finished(index: int) -> bool:
        if OmegaConf.select(configs[index], "sweep.rerun_finished", default=False):
            return False
        return sweep.finished_run(job_key(plains[index])) is not None

    done = [index for index in group if finished(index)]
    rest = [index for index in group if index not in done]
    return [[index] for index in done] + ([rest] if rest else [])
