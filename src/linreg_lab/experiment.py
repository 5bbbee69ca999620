"""One experiment: config -> build -> train -> MLflow, never leaving a run RUNNING."""

from __future__ import annotations

import math
import signal
import subprocess
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from linreg_lab import build, console
from linreg_lab.config.validate import validate
from linreg_lab.interrupts import Interrupted, raise_interrupted
from linreg_lab.paths import PROJECT_ROOT
from linreg_lab.tracking import sweep
from linreg_lab.tracking.dataset import log_dataset, log_model
from linreg_lab.tracking.orphans import fail_orphaned_runs
from linreg_lab.tracking.params import flatten, run_name_from_overrides
from linreg_lab.tracking.plots import log_plots
from linreg_lab.tracking.run import FAILED, FINISHED, KILLED, RunRecorder
from linreg_lab.tracking.store import experiment_id, open_client
from linreg_lab.training.engine import choose_engine, fit
from linreg_lab.training.evaluate import least_squares
from linreg_lab.training.monitor import Diverged, EpochMonitor


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: str
    metrics: dict[str, float]
    engine: str

    @property
    def objective(self) -> float:
        """What a sweeper minimises: the final train/loss, inf for a failed run."""
        loss = self.metrics.get("train/loss", math.inf)
        return loss if self.status == FINISHED and math.isfinite(loss) else math.inf


def run_experiment(cfg: DictConfig, overrides: Sequence[str] = (), quiet: bool = False) -> Outcome:
    """Validate, build, train and record one run; never leaves the run RUNNING."""
    validate(cfg)
    trainer = build.trainer(cfg)
    tracking = build.tracking(cfg)
    client = open_client(tracking)
    parent = sweep.current_parent()
    exp_id = parent.experiment_id if parent else experiment_id(client, tracking)
    if parent is None:  # a sweep's parent process has done this before its jobs
        fail_orphaned_runs(client, exp_id)

    data = build.dataset(cfg)
    torch.set_num_threads(trainer.num_threads(data.num_samples, data.num_features))
    torch.manual_seed(trainer.seed)
    model = build.model(cfg, data.num_features)
    optimizer_factory = build.optimizer_factory(cfg)
    choose_engine(trainer.engine, model, optimizer_factory)  # refuse before a run exists
    optimum = least_squares(data.X, data.y)
    monitor = EpochMonitor(data, optimum, tracking.log_weights_up_to)

    run = RunRecorder.start(
        client,
        exp_id,
        tracking.run_name or run_name_from_overrides(overrides),
        tags={**_git_tags(), "linreg.overrides": " ".join(overrides) or "(none)"},
        parent_run_id=parent.run_id if parent else None,
    )
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config.pop("hydra", None)
    with _ended(run, monitor) as outcome:
        run.log_params(flatten(config))
        run.log_text(OmegaConf.to_yaml(config), "config.yaml")
        run.log_text("\n".join(overrides) + "\n", "overrides.txt")
        log_dataset(client, run.run_id, config["dataset"], data)
        run.log_metrics({"optimum/loss": optimum.loss}, step=0)
        with console.epoch_progress(trainer.epochs, quiet) as progress:

            def on_epoch_end(epoch: int, last_batch_loss: float, w, b: float) -> None:
                metrics = monitor.measure(epoch, last_batch_loss, w, b)
                run.log_metrics(metrics, step=epoch)
                progress(epoch, metrics["train/loss"])

            outcome.engine = fit(model, optimizer_factory, data, trainer, on_epoch_end)
        run.set_tags({"linreg.engine": outcome.engine})
        run.log_json(_parameters_report(data, optimum, model), "parameters.json")
        log_plots(client, run.run_id, monitor.history, data, optimum)
        if tracking.log_model:
            log_model(tracking.uri, run.run_id, model, data.X)
    result = Outcome(run.run_id, outcome.status, monitor.final, outcome.engine)
    if not quiet:
        console.summary(result, data, model, tracking)
    return result


@dataclass
class _Status:
    status: str = FINISHED
    engine: str = "?"


@contextmanager
def _ended(run: RunRecorder, monitor: EpochMonitor):
    """End the run FINISHED, FAILED (error as a tag) or KILLED; re-raise all but divergence."""
    outcome = _Status()
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield outcome
    except Diverged as error:
        outcome.status = FAILED
        _end_quietly(run, FAILED, str(error))
        return
    except KeyboardInterrupt:
        _end_quietly(run, KILLED, "interrupted by SIGINT")
        raise
    except Interrupted as error:
        _end_quietly(run, KILLED, f"interrupted by {error}")
        raise
    except BaseException as error:
        _end_quietly(run, FAILED, f"{type(error).__name__}: {error}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    _end_quietly(run, FINISHED)


def _end_quietly(run: RunRecorder, status: str, failure: str | None = None) -> None:
    """End the run with signals held back, so a second Ctrl-C cannot leave it RUNNING."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        run.end(status, failure)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _parameters_report(data, optimum, model) -> dict:
    w = model.weight.detach().reshape(-1).cpu()
    b = float(model.bias.detach()) if model.bias is not None else 0.0
    return {
        "true": {"w": data.true_w.tolist(), "b": data.true_b},
        "recovered": {"w": w.tolist(), "b": b},
        "least_squares": {"w": optimum.w.cpu().tolist(), "b": optimum.b, "loss": optimum.loss},
        "error": {
            "w_l2": float(torch.linalg.vector_norm(w - data.true_w)),
            "b_abs": abs(b - data.true_b),
        },
    }


def _git_tags() -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "linreg.git_dirty": str(bool(dirty)).lower()}
