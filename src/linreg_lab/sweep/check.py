"""Check the jobs a sweep will run before its parent run exists.

Settings are checked together, as each job has them (optimizer.nesterov=true is fine with a
swept momentum of 0.9, not with 0): every job of the grid, up to _MAX_JOBS_CHECKED of them;
beyond, each swept value in one job of its own (the other keys at their first value), so a bad
value is still found and a valid sweep never refused.
"""

from __future__ import annotations

import copy
import itertools
import math
import socket
from contextlib import contextmanager

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import env_override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from linreg_lab.config.validate import ConfigError, validate

# ~5 ms a job: a 1000-job grid is checked in ~5 s, before hours of training.
_MAX_JOBS_CHECKED = 1000


def swept_overrides(config: DictConfig) -> tuple[list[str], dict[str, list[str]]]:
    """(fixed overrides, 'key=value' per swept value by key) from the command line and preset."""
    arguments = task_overrides(config)
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + arguments
    fixed: dict[str, str] = {}
    swept: dict[str, list[str]] = {}
    sweeper = str(OmegaConf.select(config, "hydra.runtime.choices.hydra/sweeper", default="basic"))
    # With the config loader, a glob over a config group lists the group's options.
    loader = (
        GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    )
    for override in OverridesParser.create(config_loader=loader).parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override() and sweeper == "basic" and not override.is_discrete_sweep():
            raise ConfigError(
                f"{override.input_line} is not allowed: Hydra's basic sweeper takes lists "
                "(a,b,c), range() and glob(); interval() and tag() need hydra/sweeper=optuna "
                "(as experiment=lr_batch_optuna does)"
            )
        if override.is_sweep_override() and override.is_discrete_sweep():
            swept[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            fixed.pop(key, None)
        elif not override.is_sweep_override():
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
            swept.pop(key, None)
    return list(fixed.values()), swept


def task_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides as typed: ${...} in them is each job's, not resolved here."""
    node = OmegaConf.select(config, "hydra.overrides.task", default=None)
    return list(OmegaConf.to_container(node, resolve=False)) if node is not None else []


def sample_jobs(swept: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """The jobs to check: the whole grid, or each value once when the grid is too large."""
    values = list(swept.values())
    if not values:
        return [()]
    if math.prod(len(options) for options in values) <= _MAX_JOBS_CHECKED:
        return list(itertools.product(*values))
    firsts = [options[0] for options in values]
    jobs = []
    for position, options in enumerate(values):
        for value in options:
            jobs.append((*firsts[:position], value, *firsts[position + 1 :]))
    return list(dict.fromkeys(jobs))


@contextmanager
def numbered_jobs(config: DictConfig):
    """Yields number(n): from then on Hydra's config is as job n of the sweep `config` sees it
    (hydra.job.num and id set), so a `${hydra:job.num}` in a job's settings resolves before
    the job exists. The sweep's Hydra node is copied once (~16 ms); a number sets two keys."""
    instance = HydraConfig.instance()
    saved = instance.cfg
    if OmegaConf.select(config, "hydra", default=None) is None:
        yield lambda n: None
        return
    instance.set_config(copy.deepcopy(OmegaConf.masked_copy(config, "hydra")))
    node = instance.cfg.hydra.job

    def number(n: int) -> None:
        with read_write(node), open_dict(node):
            node.num = n
            node.id = str(n)

    try:
        yield number
    finally:
        instance.cfg = saved


@contextmanager
def as_job(config: DictConfig, number: int):
    """Hydra's config and environment as job `number` of the sweep `config` sees them
    (numbered_jobs; hydra.job.env_set, which Hydra sets only around each job: a
    +hydra.job.env_set.MLFLOW_TRACKING_URI=... moves the sweep's parent with its jobs)."""
    with numbered_jobs(config) as set_number, job_environment(config):
        set_number(number)
        yield


@contextmanager
def job_environment(config: DictConfig):
    """The environment each job of the sweep `config` runs in: hydra.job.env_set applied."""
    env_set = OmegaConf.select(config, "hydra.job.env_set", default=None) or {}
    with env_override({str(k): str(v) for k, v in env_set.items()}):
        yield


def check_sweep(config: DictConfig) -> list[tuple[list[str], DictConfig]]:
    """Raise ConfigError, naming the setting and the job, for the first job that cannot run;
    the jobs checked (their overrides and composed configs) otherwise.

    Hydra composes once per choice of config groups; a swept key then only updates a copy (its
    schema still checks the type).
    """
    fixed, swept = swept_overrides(config)
    config_name = OmegaConf.select(config, "hydra.job.config_name", default="config")
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    parser = OverridesParser.create()
    composed: dict[tuple[str, ...], DictConfig] = {}
    # Where Hydra looks for config groups, as the command line set it (--config-dir is in the
    # config loader already): a user's own group options compose here as in each job.
    hydra_overrides = OmegaConf.select(config, "hydra.overrides.hydra", default=None) or []
    searchpath = [o for o in hydra_overrides
                  if str(o).lstrip("+").startswith("hydra.searchpath=")]  # fmt: skip
    checked = []
    with numbered_jobs(config) as number:
        for job in sample_jobs(swept):
            parsed = [parser.parse_override(override) for override in job]
            recomposes = [
                override
                for override, p in zip(job, parsed)
                if p.key_or_group in groups or p.is_add() or p.is_force_add() or p.is_delete()
                or p.package is not None or p.key_or_group.startswith("hydra")
            ]  # fmt: skip
            key = tuple(recomposes)
            if key not in composed:
                composed[key] = _compose(config_name, [*searchpath, *fixed, *recomposes])
            cfg = copy.deepcopy(composed[key])
            for override, p in zip(job, parsed):
                if override in recomposes:
                    continue
                try:
                    OmegaConf.update(cfg, p.get_key_element(), p.value(), merge=True)
                except Exception as error:  # the schema refuses the value's type
                    raise ConfigError(f"{override}: {one_line(error)}") from None
            number(len(checked))
            try:
                validate(cfg)
                _check_engine(cfg)
            except ConfigError as error:
                where = f" (in the sweep's job {' '.join(job)})" if swept else ""
                raise ConfigError(f"{error}{where}") from None
            checked.append((list(job), cfg))
    return checked


def check_launcher(config: DictConfig) -> None:
    """A launcher whose cluster commands are missing fails only once it submits, after the
    sweep's parent run exists: refuse it before. So is a SLURM sweep whose jobs would write to
    a sqlite file from other machines, or ask for more CPUs or nodes than its partition has."""
    import shutil

    target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if target.endswith("VectorizedLauncher"):
        problem = pass_size_problem(OmegaConf.select(config, "hydra.launcher.pass_size"))
        if problem:
            raise ConfigError(problem)
    if target.endswith("JoblibLauncher"):
        workers = OmegaConf.select(config, "hydra.launcher.n_jobs", default=-1)
        whole = isinstance(workers, int) and not isinstance(workers, bool)
        if workers is not None and (not whole or workers == 0):
            raise ConfigError(
                f"hydra.launcher.n_jobs={workers} is not allowed: a positive number of worker "
                "processes, or -1 for one per CPU (joblib's negative counts: CPUs + 1 + n_jobs)"
            )
    if not target.endswith("SlurmLauncher"):
        return
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise ConfigError(
            "hydra/launcher=slurm is not allowed here: SLURM's sbatch is not on PATH (or its "
            "squeue); on one machine use hydra/launcher=joblib (parallel) or submitit_local"
        )
    per_task = OmegaConf.select(config, "hydra.launcher.jobs_per_task", default="auto")
    whole = isinstance(per_task, int) and not isinstance(per_task, bool)
    if per_task != "auto" and not (whole and per_task >= 1):
        raise ConfigError(
            f"hydra.launcher.jobs_per_task={per_task}: not allowed; use a positive whole number "
            "(sweep jobs per SLURM array task) or auto"
        )
    uri = str(OmegaConf.select(config, "tracking.uri", default="") or "")
    scheme = uri.partition("://")[0] if "://" in uri else ""
    partition = OmegaConf.select(config, "hydra.launcher.partition", default=None)
    nodes = slurm_nodes(partition)
    where = f"partition {partition}" if partition else "the default partition"
    if scheme in ("", "file", "sqlite"):  # not a server, nor a database server others reach
        _check_store_reach(uri, nodes, where)
    _check_request_fits(config, nodes, where)


def _check_store_reach(uri: str, nodes: list[str] | None, where: str) -> None:
    here = {socket.gethostname(), socket.gethostname().split(".")[0], "localhost"}
    elsewhere = sorted(set(nodes or []) - here)
    if nodes is None or elsewhere:
        on = (
            f"run on {', '.join(elsewhere[:5])} ({where})"
            if nodes
            else (f"may run on other machines (scontrol did not list {where}'s nodes)")
        )
        raise ConfigError(
            f"tracking.uri={uri}: not allowed with hydra/launcher=slurm, whose jobs {on}: a "
            "sqlite file written from other machines loses runs; use an MLflow server they "
            "reach: tracking=server MLFLOW_TRACKING_URI=http://<host>:5000 (make server)"
        )


def _check_request_fits(config: DictConfig, nodes: list[str] | None, where: str) -> None:
    """A job asking for more CPUs a node than any node of the partition has, or more nodes
    than it holds, would stay PENDING forever (sbatch takes it): refuse it before any run."""
    launcher = config.hydra.launcher
    tasks = OmegaConf.select(launcher, "tasks_per_node", default=1) or 1
    cpus = OmegaConf.select(launcher, "cpus_per_task", default=1) or 1
    wanted = OmegaConf.select(launcher, "nodes", default=1) or 1
    sizes = slurm_node_cpus(nodes) if nodes else None
    if not sizes:  # scontrol did not say: SLURM decides
        return
    fit = [node for node, count in sizes.items() if count >= tasks * cpus]
    if len(fit) >= wanted:
        return
    most = max(sizes.values())
    if tasks * cpus > most:
        raise ConfigError(
            f"hydra.launcher.tasks_per_node={tasks} x hydra.launcher.cpus_per_task={cpus}: "
            f"{tasks * cpus} CPUs a node, but {where}'s nodes have at most {most} (scontrol "
            "show node): SLURM would keep the jobs pending forever; lower either (e.g. "
            f"hydra.launcher.cpus_per_task={max(1, most // tasks)})"
        )
    raise ConfigError(
        f"hydra.launcher.nodes={wanted}: {where} has {len(fit)} node(s) of at least "
        f"{tasks * cpus} CPUs ({', '.join(sorted(fit)[:5])}): SLURM would keep the jobs "
        f"pending forever; use hydra.launcher.nodes={len(fit)}, or fewer CPUs a node"
    )


def slurm_node_cpus(nodes: list[str]) -> dict[str, int] | None:
    """Each node's CPUs for jobs (scontrol's CPUEfctv, else CPUTot), or None where scontrol
    does not answer."""
    sizes = {}
    for fields in _scontrol_show("node", ",".join(nodes)) or []:
        count = fields.get("CPUEfctv") or fields.get("CPUTot")
        if fields.get("NodeName") in nodes and count and count.isdigit():
            sizes[fields["NodeName"]] = int(count)
    return sizes or None


def pass_size_problem(size) -> str | None:
    """Why hydra.launcher.pass_size (the vectorized launcher's) is not allowed, or None."""
    if size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
        return None  # (None: the launcher's default)
    return (
        f"hydra.launcher.pass_size={size}: not allowed; use a whole number >= 0 (the most jobs "
        "a cheap group trains in one pass; 0: one pass per group)"
    )


def slurm_nodes(partition: str | None) -> list[str] | None:
    """The host names of a SLURM partition's nodes (the default partition's for None), or None
    where scontrol does not answer."""
    import subprocess

    for fields in _scontrol_show("partition", *([partition] if partition else [])) or []:
        if partition or fields.get("Default") == "YES":
            try:
                hosts = subprocess.run(["scontrol", "show", "hostnames", fields.get("Nodes", "")],
                                       capture_output=True, text=True, timeout=30)  # fmt: skip
            except (OSError, subprocess.SubprocessError):
                return None
            return hosts.stdout.split()
    return None


def _scontrol_show(*what: str) -> list[dict[str, str]] | None:
    """scontrol -o show <what>: each record (a line) as its key=value fields; None where
    scontrol does not answer."""
    import subprocess

    try:
        shown = subprocess.run(["scontrol", "-o", "show", *what], capture_output=True,
                               text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [dict(f.split("=", 1) for f in line.split() if "=" in f)
            for line in shown.stdout.splitlines()]  # fmt: skip


def _check_engine(cfg: DictConfig) -> None:
    """trainer.engine=analytic with a model or optimizer it cannot train."""
    if OmegaConf.select(cfg, "trainer.engine") != "analytic":
        return
    from linreg_lab import build
    from linreg_lab.engines import EngineError

    try:
        build.engine(cfg)
    except EngineError as error:
        raise ConfigError(str(error)) from None


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name, overrides=overrides)
    except Exception as error:  # Hydra's composition errors: wrong type, unknown key
        raise ConfigError(one_line(error)) from None


def one_line(error: BaseException) -> str:
    """Hydra's multi-line composition error (and its cause) as one line."""
    text = f"{error}\n{error.__cause__ or ''}".split("Config search path")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type="))]
    return " ".join(dict.fromkeys(lines))
