"""Before a sweep starts: each job's learning rate against its dataset's stable bounds.

Jobs on the same dataset config share one computation (the data and its least-squares sums,
which the first in-process job then reuses). A job above the exact full-batch bound "will
diverge", one near or above the minibatch estimate "may diverge" (engines.stability); both run
anyway: the user may be probing. Nothing is printed when every job is stable.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from linreg_lab import build
from linreg_lab.engines import stability
from linreg_lab.experiment.run import data_and_optimum
from linreg_lab.sweep.reuse import DataReuse, key_of


def preflight(jobs: list[tuple[list[str], DictConfig]], reuse: DataReuse):
    """(lines, params): the lines to print (one per job that may or will diverge) and the
    parent's params (the first dataset's curvature, how many jobs will or may diverge)."""
    lines: list[str] = []
    params: dict = {}
    counts = {"will diverge": 0, "may diverge": 0}
    by_data: dict[str, stability.Curvature] = {}
    for number, (job, cfg) in enumerate(jobs):
        optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
        if not str(optimizer.get("_target_", "")).endswith("SGD"):
            continue
        trainer = build.trainer(cfg)
        key = key_of(cfg, trainer.threads)
        if key not in by_data:
            _, optimum = reuse.get(cfg, trainer, data_and_optimum)
            by_data[key] = optimum.curvature
            if not params:
                params = stability.params(by_data[key], None)
        c = by_data[key]
        v = stability.verdict(c, optimizer, trainer.batch_size)
        if v is None or v.word == "stable":
            continue
        counts[v.word] += 1
        name = " ".join(job) or "the job"
        lines.append(f"linreg-lab: job #{number} ({name}): {v.why(trainer.batch_size)}")
    if params:
        params["stability.jobs_will_diverge"] = counts["will diverge"]
        params["stability.jobs_may_diverge"] = counts["may diverge"]
    return lines, params
