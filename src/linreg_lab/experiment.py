"""One experiment: config -> build -> train -> MLflow, never leaving a run RUNNING."""

from __future__ import annotations

import math
import signal
import subprocess
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from linreg_lab import build, console, dataset_cache
from linreg_lab.config.validate import validate
from linreg_lab.data import RegressionData
from linreg_lab.interrupts import Interrupted, raise_interrupted, run_open
from linreg_lab.model import linear_parameters
from linreg_lab.paths import PROJECT_ROOT
from linreg_lab.tracking import plots, sweep, writes
from linreg_lab.tracking.dataset import DataFacts, log_dataset, log_model
from linreg_lab.tracking.orphans import fail_orphaned_runs
from linreg_lab.tracking.params import flatten, run_name_from_overrides
from linreg_lab.tracking.run import FAILED, FINISHED, KILLED, RunRecorder
from linreg_lab.tracking.service import Store
from linreg_lab.tracking.store import TrackingSettings, bind_experiment
from linreg_lab.training import preload
from linreg_lab.training.engine import choose_engine, fit
from linreg_lab.training.evaluate import LeastSquares, least_squares
from linreg_lab.training.monitor import Diverged, EpochMonitor
from linreg_lab.training.settings import TrainerSettings


@dataclass(frozen=True)
class Outcome:
    run_ref: str  # the run's id, or the reference the MLflow helper resolves to it
    status: str
    metrics: dict[str, float]
    engine: str
    store: Store | None = None
    failure: str | None = None  # why the run ended FAILED (a divergence)

    @property
    def run_id(self) -> str:
        """The run's MLflow id (waits for the helper to have created the run)."""
        return self.store.resolve(self.run_ref) if self.store is not None else self.run_ref

    @property
    def objective(self) -> float:
        """What a sweeper minimises: the final train/loss, inf for a failed run."""
        loss = self.metrics.get("train/loss", math.inf)
        return loss if self.status == FINISHED and math.isfinite(loss) else math.inf


@dataclass
class Setup:
    """What a run needs besides its model: settings, the store, the data and its optimum.

    experiment_id may be a reference the MLflow helper resolves (see tracking.service).
    """

    cfg: DictConfig
    trainer: TrainerSettings
    tracking: TrackingSettings
    store: Store
    experiment_id: str
    parent_run_id: str | None
    data: RegressionData
    optimum: LeastSquares


def set_up(cfg: DictConfig, shared: Setup | None = None) -> Setup:
    """Validate cfg, open the store, build the data; reuse shared's store and data if given.

    The store opens in the MLflow helper while the data is built; its failure (a TrackingError)
    surfaces at the next Store.check(), at the latest when the run ends.
    """
    validate(cfg)
    trainer, tracking = build.trainer(cfg), build.tracking(cfg)
    if shared is not None:
        return Setup(cfg, trainer, tracking, shared.store, shared.experiment_id,
                     shared.parent_run_id, shared.data, shared.optimum)  # fmt: skip
    store = Store.of(tracking)
    parent = sweep.current_parent()
    if parent is not None:  # the sweep's process has opened the store and its experiment
        exp_id = parent.experiment_id
    else:
        exp_id = store.new_ref()
        store.post(bind_experiment, exp_id, tracking)
        store.post(fail_orphaned_runs, exp_id)
    data, optimum = _dataset_and_optimum(cfg, trainer)
    return Setup(cfg, trainer, tracking, store, exp_id, parent and parent.run_id, data, optimum)


def _dataset_and_optimum(cfg: DictConfig, trainer: TrainerSettings):
    """The job's data and its least-squares optimum: the previous job's if it had the same."""
    key = dataset_cache.key_of(cfg, trainer.threads)
    reused = dataset_cache.kept(key)
    if reused is not None:
        data, optimum = reused
        torch.set_num_threads(trainer.num_threads(data.num_samples, data.num_features))
        return data, optimum
    size = _stated_size(cfg)
    if size is not None:  # a custom dataset target may not say its size
        preload.compiled_shuffle_in_background(size[0], trainer.shuffle)
        # The training's threads from the start: the data's pages are faulted in on them.
        torch.set_num_threads(trainer.num_threads(*size))
    data = build.dataset(cfg)
    torch.set_num_threads(trainer.num_threads(data.num_samples, data.num_features))
    optimum = least_squares(data.X, data.y)
    dataset_cache.keep(key, data, optimum)
    return data, optimum


def _stated_size(cfg: DictConfig) -> tuple[int, int] | None:
    """(N, D) as the dataset config states them (D: num_features, else len(true_w)), or None."""
    num_samples = OmegaConf.select(cfg, "dataset.num_samples", default=None)
    num_features = OmegaConf.select(cfg, "dataset.num_features", default=None)
    if num_features is None:
        true_w = OmegaConf.select(cfg, "dataset.true_w", default=None)
        num_features = len(true_w) if OmegaConf.is_list(true_w) else None
    if isinstance(num_samples, int) and isinstance(num_features, int):
        return num_samples, num_features
    return None


def build_model(setup: Setup) -> tuple[torch.nn.Module, Callable]:
    """The seeded model and its optimizer factory; refuses an impossible engine choice now."""
    torch.manual_seed(setup.trainer.seed)
    model = build.model(setup.cfg, setup.data.num_features)
    optimizer_factory = build.optimizer_factory(setup.cfg)
    choose_engine(setup.trainer.engine, model, optimizer_factory)
    return model, optimizer_factory


def open_run(setup: Setup, overrides: Sequence[str], flush_seconds: float = 1.0) -> RunRecorder:
    """Create the run: its name, tags, parent; nothing logged yet."""
    return RunRecorder.start(
        setup.store,
        setup.experiment_id,
        setup.tracking.run_name or run_name_from_overrides(overrides),
        tags={**_git_tags(), "linreg.overrides": " ".join(overrides) or "(none)"},
        parent_run_id=setup.parent_run_id,
        flush_seconds=flush_seconds,
    )


def record_start(run: RunRecorder, setup: Setup, overrides: Sequence[str]) -> None:
    """Log what is known before training: params, config, overrides, dataset, optimum."""
    config = build.plain_config(setup.cfg)
    run.log_params(flatten(config))
    run.log_text(OmegaConf.to_yaml(config), "config.yaml")
    run.log_text("\n".join(overrides) + "\n", "overrides.txt")
    setup.store.post(log_dataset, run.run_ref, config["dataset"], DataFacts.of(setup.data))
    run.log_metrics({"optimum/loss": setup.optimum.loss}, step=0)


def record_end(
    run: RunRecorder,
    setup: Setup,
    model,
    monitor: EpochMonitor,
    engine: str,
    draw_here: bool | None = None,
) -> None:
    """Log what training produced: engine, parameters, plots, and the model if asked.

    draw_here: who draws the plots; None: the MLflow helper, while this process goes on, unless
    it is behind (then this process).
    """
    run.set_tags({"linreg.engine": engine})
    run.log_json(_parameters_report(setup.data, setup.optimum, model), "parameters.json")
    if setup.tracking.log_plots and monitor.history:
        inputs = plots.PlotInputs.of(monitor.history, setup.data, setup.optimum)
        if draw_here is None:
            draw_here = not setup.store.offload(plots.log_plots, run.run_ref, inputs)
        elif not draw_here:
            setup.store.hand_over(plots.log_plots, run.run_ref, inputs)
        if draw_here:
            for path, png in _drawn_here(inputs).items():
                setup.store.post(writes.log_image_bytes, run.run_ref, png, path)
    if setup.tracking.log_model:
        log_model(setup.tracking.uri, run.run_id, model, setup.data.X)


def run_experiment(cfg: DictConfig, overrides: Sequence[str] = (), quiet: bool = False) -> Outcome:
    """Validate, build, train and record one run; never leaves the run RUNNING."""
    setup = set_up(cfg)
    model, optimizer_factory = build_model(setup)
    monitor = EpochMonitor(setup.data, setup.optimum, setup.tracking.log_weights_up_to)
    run = open_run(setup, overrides)
    with ended(run) as outcome:
        record_start(run, setup, overrides)
        with console.epoch_progress(setup.trainer.epochs, quiet) as progress:

            def on_epoch_end(epoch: int, last_batch_loss: float, w, b: float) -> None:
                metrics = monitor.measure(epoch, last_batch_loss, w, b)
                run.log_metrics(metrics, step=epoch)
                progress(epoch, metrics["train/loss"])
                setup.store.check()  # a store that failed to open stops training here

            outcome.engine = fit(model, optimizer_factory, setup.data, setup.trainer, on_epoch_end)
        record_end(run, setup, model, monitor, outcome.engine)
    if sweep.current_parent() is not None and not sweep.in_worker_process():
        setup.store.check()  # the sweep's end waits for the helper; this job need not
    else:
        setup.store.sync()  # the run is in the store when this returns
    if sweep.current_parent() is None:  # no next job to reuse the data
        dataset_cache.clear()
    result = Outcome(
        run.run_ref, outcome.status, monitor.final, outcome.engine, setup.store, outcome.failure
    )
    if not quiet:
        console.summary(result, setup.data, model, setup.tracking)
    return result


@dataclass
class _Status:
    status: str = FINISHED
    engine: str = "?"
    failure: str | None = None


@contextmanager
def ended(run: RunRecorder):
    """End the run FINISHED, FAILED (error as a tag) or KILLED; re-raise all but divergence."""
    outcome = _Status()
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        with run_open():
            yield outcome
    except Diverged as error:
        outcome.status, outcome.failure = FAILED, str(error)
        end_quietly(run, FAILED, str(error))
        return
    except KeyboardInterrupt:
        end_quietly(run, KILLED, "interrupted by SIGINT")
        raise
    except Interrupted as error:
        end_quietly(run, KILLED, f"interrupted by {error}")
        raise
    except BaseException as error:
        end_quietly(run, FAILED, f"{type(error).__name__}: {error}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome.status == FINISHED:
        end_quietly(run, FINISHED)


def end_quietly(run: RunRecorder, status: str, failure: str | None = None) -> None:
    """End the run with signals held back, so a second Ctrl-C cannot leave it RUNNING."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        run.end(status, failure)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _drawn_here(inputs: plots.PlotInputs) -> dict[str, bytes]:
    """The plots as PNGs drawn in this process; none (and a warning) if matplotlib fails."""
    try:
        return plots.png_images(inputs)
    except Exception as error:  # the trained run is worth keeping without pictures
        plots.log.warning("could not draw the plots: %s", error)
        return {}


def _parameters_report(data, optimum, model) -> dict:
    w, b = linear_parameters(model)
    w = w.cpu()
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
