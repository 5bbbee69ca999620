"""One experiment: config -> build -> train -> MLflow, never leaving a run RUNNING.

The run knows nothing about sweeps: whoever calls it may pass the store to record into, the
parent run, and where its data comes from (a sweep hands its jobs a DataReuse); by default it
opens the store itself and builds its own data.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from linreg_lab import build, console
from linreg_lab.config.validate import validate
from linreg_lab.data import DataError, RegressionData
from linreg_lab.engines import EngineError, choose_engine, fit, stability
from linreg_lab.engines.distributed import World, joined, world_from_environment
from linreg_lab.engines.least_squares import LeastSquares, least_squares, mse
from linreg_lab.engines.monitor import Diverged, EpochMonitor, RankFailed
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.model import code_folder, linear_parameters, model_mse, saved
from linreg_lab.paths import PROJECT_ROOT
from linreg_lab.signals import Interrupted
from linreg_lab.tracking import FAILED, FINISHED, KILLED, Run, Store, TrackingSettings
from linreg_lab.tracking.dataset import DataFacts
from linreg_lab.tracking.model import MODULE_ARTIFACT, model_spec
from linreg_lab.tracking.params import (
    TAG_DATA_KEY,
    TAG_JOB_KEY,
    data_key,
    flatten,
    job_key,
    run_name_from_overrides,
)
from linreg_lab.tracking.plots import PlotInputs, png_images


class DataSource(Protocol):
    """Where a run gets its data and least-squares optimum: build(cfg) makes them; a source
    may hand back ones it kept for an equal dataset config instead."""

    def get(
        self, cfg: DictConfig, trainer: TrainerSettings, build: Callable
    ) -> tuple[RegressionData, LeastSquares]: ...


class StopEarly(Exception):
    """Raised by a run's on_epoch hook (a sweeper's pruner): training stops after that epoch;
    the run ends KILLED with this reason and tags, every epoch it trained kept. Not an error:
    the command goes on."""

    def __init__(self, reason: str, tags: dict[str, str] | None = None):
        super().__init__(reason)
        self.tags = tags or {}


@dataclass(frozen=True)
class Outcome:
    run: Run
    status: str
    metrics: dict[str, float]
    engine: str
    failure: str | None = None  # why the run ended FAILED (a divergence)

    @property
    def run_id(self) -> str:
        """The run's MLflow id (waits for the helper to have created the run)."""
        return self.run.id

    @property
    def ranked_by(self) -> str:
        """val/loss when the run has a validation split, else train/loss."""
        return "val/loss" if "val/loss" in self.metrics else "train/loss"

    @property
    def objective(self) -> float:
        """What a sweeper minimises: the final val/loss (train/loss without a validation
        split), inf for a failed run."""
        loss = self.metrics.get(self.ranked_by, math.inf)
        return loss if self.status == FINISHED and math.isfinite(loss) else math.inf


@dataclass
class Setup:
    """What a run needs besides its model: settings, the store, the data and its optimum."""

    cfg: DictConfig
    trainer: TrainerSettings
    tracking: TrackingSettings
    store: Store
    parent_run_id: object  # str, a tracking Handle, or None
    data: RegressionData
    optimum: LeastSquares
    plain: dict  # the resolved config (build.plain_config), resolved once per run


def set_up(
    cfg: DictConfig,
    store: Store | None = None,
    parent_run_id=None,
    data_source: DataSource | None = None,
    plain: dict | None = None,
) -> Setup:
    """Validate cfg, open the store (unless given), get the data and its optimum.

    plain: cfg resolved (build.plain_config), where the caller has it already.

    The store opens in the MLflow helper while the data is built; its failure (a TrackingError)
    surfaces at the next store.check(), at the latest when the run ends.
    """
    validate(cfg)
    trainer, tracking = build.trainer(cfg), build.tracking(cfg)
    store = store or Store.open(tracking)
    data, optimum = (data_source or _Fresh()).get(cfg, trainer, data_and_optimum)
    torch.set_num_threads(trainer.num_threads(data.num_samples, data.num_features))
    plain = build.plain_config(cfg) if plain is None else plain
    return Setup(cfg, trainer, tracking, store, parent_run_id, data, optimum, plain)


class _Fresh:
    def get(self, cfg, trainer, build):
        return build(cfg, trainer)


def data_and_optimum(cfg: DictConfig, trainer: TrainerSettings):
    """The data and its least-squares optimum, on the run's threads (its pages fault in there)."""
    size = stated_size(cfg)
    if size is not None:  # a custom dataset target may not say its size
        torch.set_num_threads(trainer.num_threads(*size))
    if OmegaConf.select(cfg, "dataset.stream", default=False) is True:
        _can_stream(cfg, trainer)  # refused before the table's first pass, not after
    data = build.dataset(cfg)
    torch.set_num_threads(trainer.num_threads(data.num_samples, data.num_features))
    if data.streamed:  # its sums were gathered as it was read
        _can_stream(cfg, trainer)  # (dataset.stream=auto decided it)
        return data, data.optimum
    return data, least_squares(data.X, data.y)


def _can_stream(cfg: DictConfig, trainer: TrainerSettings) -> None:
    """Raises the one-line error for a run a streamed table cannot train: on a GPU, or with a
    model, optimizer or engine other than the analytic engine's."""
    if trainer.device not in ("auto", "cpu"):
        raise DataError(f"trainer.device={trainer.device} is not allowed with a streamed "
                        "table: it trains on the CPU (trainer.device=cpu or auto)")  # fmt: skip
    choose_engine(trainer.engine, build.model(cfg, in_features=1), build.optimizer_factory(cfg),
                  streamed=True)  # fmt: skip


def stated_size(cfg: DictConfig) -> tuple[int, int] | None:
    """(N, D) as the dataset config states them (D: num_features, else len(true_w)), or None."""
    num_samples = OmegaConf.select(cfg, "dataset.num_samples", default=None)
    num_features = OmegaConf.select(cfg, "dataset.num_features", default=None)
    if num_features is None:
        true_w = OmegaConf.select(cfg, "dataset.true_w", default=None)
        num_features = len(true_w) if OmegaConf.is_list(true_w) else None
    if isinstance(num_samples, int) and isinstance(num_features, int):
        return num_samples, num_features
    return None


def build_model(setup: Setup, world: World | None = None) -> tuple[torch.nn.Module, Callable]:
    """The seeded model and its optimizer factory; refuses an impossible engine choice now.

    world: the launcher's ranks this process is one of (SLURM's tasks, torchrun), if any."""
    torch.manual_seed(setup.trainer.seed)
    model = build.model(setup.cfg, setup.data.num_features)
    optimizer_factory = build.optimizer_factory(setup.cfg)
    processes = setup.trainer.processes
    if world is not None:
        if processes > 1:
            raise EngineError(
                f"trainer.processes={processes} in one of {world.size} {world.source} tasks: "
                "a job is either processes on one machine or one rank per task (set "
                "trainer.processes=1)"
            )
        processes = world.size
    choose_engine(setup.trainer.engine, model, optimizer_factory,
                  streamed=setup.data.streamed, processes=processes)  # fmt: skip
    if processes > setup.data.num_samples:
        raise DataError(f"trainer.processes={processes} is more than the training rows "
                        f"({setup.data.num_samples}): at most one rank per row")  # fmt: skip
    return model, optimizer_factory


def open_run(setup: Setup, overrides: Sequence[str], flush_seconds: float = 1.0, tags=None) -> Run:
    """Create the run: its name, tags (the caller's too), parent; nothing logged yet."""
    return setup.store.start_run(
        setup.tracking.run_name or run_name_from_overrides(overrides),
        tags={
            **_git_tags(),
            "linreg.overrides": " ".join(overrides) or "(none)",
            TAG_JOB_KEY: job_key(setup.plain),
            TAG_DATA_KEY: data_key(setup.plain, setup.data.streamed),
            **({"linreg.streamed": "true"} if setup.data.streamed else {}),
            **({"linreg.held": "true"} if getattr(setup.data, "hold", False) else {}),
            **(tags or {}),
        },  # fmt: skip
        parent_run_id=setup.parent_run_id,
        flush_seconds=flush_seconds,
    )


def record_start(
    run: Run, setup: Setup, overrides: Sequence[str], world_size: int | None = None
) -> None:
    """Log what is known before training: params, config, overrides, dataset, optimum.

    world_size: the ranks its launcher started (SLURM's tasks, torchrun), logged as
    trainer.processes, the job's world size however it was made."""
    config = setup.plain
    params = flatten(config)
    if world_size is not None:
        params["trainer.processes"] = world_size
    if params.get("model.module.in_features") == "???":  # filled in from the data
        params["model.module.in_features"] = setup.data.num_features
    run.log_params({**params, **stability_params(setup.optimum, config)})
    run.log_text(config_yaml(config), "config.yaml")
    run.log_text("\n".join(overrides) + "\n", "overrides.txt")
    run.log_dataset(config["dataset"], DataFacts.of(setup.data))
    run.log_metrics({"optimum/loss": setup.optimum.loss}, step=0)


class _ConfigDumper(yaml.SafeDumper):
    """YAML as OmegaConf.to_yaml writes a resolved config: strings that would read back as
    numbers or booleans quoted ('1e5', 'yes'), no &anchors, unicode as it is."""

    def ignore_aliases(self, data) -> bool:
        return True


_YAML_BOOLS = {"y", "n", "yes", "no", "on", "off", "true", "false"}


def _quoted_if_not_a_string(dumper: yaml.SafeDumper, text: str):
    try:
        float(text)
        reads_as_other = True
    except ValueError:
        reads_as_other = text.lower() in _YAML_BOOLS
    style = "'" if reads_as_other else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ConfigDumper.add_representer(str, _quoted_if_not_a_string)


def config_yaml(config: dict) -> str:
    """The resolved config as YAML, as OmegaConf.to_yaml writes it, from the plain dict
    (~2 ms; OmegaConf.to_yaml first rebuilds a DictConfig from it, ~9 ms a job)."""
    return yaml.dump(
        config, Dumper=_ConfigDumper, default_flow_style=False, allow_unicode=True,
        sort_keys=False,
    )  # fmt: skip


def _verdict(optimum: LeastSquares, config: dict) -> tuple[stability.Verdict | None, int]:
    """The run's lr against its data's bounds (engines.stability), and its batch size."""
    batch = int(config.get("trainer", {}).get("batch_size", 1))
    return stability.verdict(optimum.curvature, config.get("optimizer", {}), batch), batch


def _say_if_unstable(setup: Setup) -> None:
    """The run's verdict on stderr before it trains: 'will diverge' or 'may diverge' (nothing
    when stable, or for optimizers without a bound)."""
    v, batch = _verdict(setup.optimum, setup.plain)
    if v is not None and v.word != "stable":
        console.say(f"linreg-lab: {v.why(batch)}", file=sys.stderr)


def stability_params(optimum: LeastSquares, config: dict) -> dict:
    """The dataset's curvature and the run's lr against its bounds (engines.stability)."""
    return stability.params(optimum.curvature, _verdict(optimum, config)[0])


def record_end(
    run: Run, setup: Setup, model, monitor: EpochMonitor, engine: str, draw_here: bool = False
) -> None:
    """Log what training produced: engine, parameters, plots, and the model if asked.

    The plots are drawn by the MLflow helper while this process goes on, or here (draw_here)
    when this process will wait for the helper anyway: meanwhile the helper is still busy."""
    run.tag_at_end({"linreg.engine": engine})  # with the last metrics: one write
    data = setup.data
    params = linear_parameters(model)
    if data.has_test and monitor.history:
        if params is None:
            test_loss = model_mse(model, data.split.X_test, data.split.y_test)
        elif data.streamed:  # the test rows' sums
            test_loss = data.test_sums.loss_of(*params)
        else:
            test_loss = mse(data.split.X_test, data.split.y_test, *params)
        monitor.history[-1]["test/loss"] = test_loss  # in the outcome's final metrics too
        run.log_metrics({"test/loss": test_loss}, step=len(monitor.history))
    report = _parameters_report(data, setup.optimum, model)
    target = OmegaConf.select(setup.cfg, "dataset.target", default=None)
    report["target"] = target if isinstance(target, str) else "y"  # the model's output column
    if params is None:  # a module of the user's own: stored, so that its model can be logged
        try:  # (here, or as a sweep's best); its size: the module's own
            run.log_bytes(saved(model), MODULE_ARTIFACT)
        except Exception as error:  # a module torch.save cannot pickle (a lambda in it)
            report.pop("module", None)
            logging.getLogger(__name__).warning(
                "%s cannot be saved (%s): its run logs no model", type(model).__name__,
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )  # fmt: skip
    run.log_json(report, "parameters.json")
    # A sweep's jobs: their loss curves are drawn together on the sweep's parent (report.py);
    # a job's own PNGs would repeat what MLflow's charts show, at ~80 ms a job.
    own_plots = setup.parent_run_id is None or setup.tracking.plots_per_job
    if setup.tracking.log_plots and own_plots and monitor.history:
        inputs = PlotInputs.of(monitor.history, setup.data, setup.optimum)
        if draw_here:
            run.log_images(_drawn(inputs))
        else:
            run.log_plots(inputs)
    spec = model_spec(report) if setup.tracking.log_model else None
    if spec is not None:  # (None: a module that could not be saved, said above)
        run.log_model(spec)


def _drawn(inputs: PlotInputs) -> dict[str, bytes]:
    """The plots as PNGs drawn here; none (and a warning) if matplotlib fails."""
    try:
        return png_images(inputs)
    except Exception as error:  # the trained run is worth keeping without pictures
        logging.getLogger(__name__).warning("could not draw the plots: %s", error)
        return {}


def run_experiment(
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    quiet: bool = False,
    *,
    store: Store | None = None,
    parent_run_id=None,
    data_source: DataSource | None = None,
    wait: bool = True,
    plain: dict | None = None,
    tags: dict[str, str] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> Outcome | None:
    """Validate, build, train and record one run; never leaves the run RUNNING.

    wait: return once the run is in the store (False: once it is handed to the helper).
    plain: cfg resolved (build.plain_config), where the caller has it already.
    tags: more tags for the run (linreg-train: its Hydra output folder).
    on_epoch(epoch, metrics): called once each epoch's metrics are logged; it may raise
    StopEarly (a sweeper's pruner).

    In a world of ranks its launcher started (SLURM tasks, torchrun), rank 0 does all this and
    the other ranks only train: they return None.
    """
    world = world_from_environment(" ".join(overrides))
    if world is not None:
        world.check()
    with joined(world):  # before the data: a streamed table's first pass is split between ranks
        if world is not None and world.rank > 0:
            return _train_as_rank(cfg, world, data_source)
        return _run(cfg, overrides, quiet, store, parent_run_id, data_source, wait, plain, tags,
                    on_epoch, world)  # fmt: skip


def _run(cfg, overrides, quiet, store, parent_run_id, data_source, wait, plain, tags, on_epoch,
         world: World | None) -> Outcome:  # fmt: skip
    """run_experiment's run (as rank 0 of world, where there is one)."""
    setup = set_up(cfg, store, parent_run_id, data_source, plain)
    model, optimizer_factory = build_model(setup, world)
    monitor = EpochMonitor(setup.data, setup.optimum, setup.tracking.log_weights_up_to)
    if (start := linear_parameters(model)) is not None:
        monitor.start(*start)
        if not quiet:  # a sweep says it for every job before the sweep starts (preflight)
            _say_if_unstable(setup)  # (SGD's bound on least squares: linear models only)
    else:  # a model of the user's own: divergence counts from its own starting loss
        monitor.start_loss(model_mse(model, setup.data.X, setup.data.y))
    run = open_run(setup, overrides, tags=tags)
    try:
        with ended(run) as outcome:
            record_start(run, setup, overrides, world.size if world is not None else None)
            with console.epoch_progress(setup.trainer.epochs, quiet) as progress:

                def on_epoch_end(epoch: int, last_batch_loss: float, w, b: float,
                                 loss: float | None = None, val_loss: float | None = None
                                 ) -> None:  # fmt: skip
                    try:
                        metrics = monitor.measure(epoch, last_batch_loss, w, b, loss, val_loss)
                    except Diverged as error:  # the epoch it diverged at is kept too
                        run.log_metrics(error.metrics, step=epoch)
                        raise
                    run.log_metrics(metrics, step=epoch)
                    progress(epoch, metrics["train/loss"])
                    setup.store.check()  # a store that failed to open stops training here
                    if on_epoch is not None:
                        on_epoch(epoch, metrics)

                def on_places(places: list[str]) -> None:  # a data-parallel job's ranks
                    run.set_tags({"linreg.ranks": " ".join(places)})

                trainer = setup.trainer
                outcome.engine = fit(model, optimizer_factory, setup.data, trainer, on_epoch_end,
                                     on_places, world)  # fmt: skip
            record_end(run, setup, model, monitor, outcome.engine, draw_here=wait)
    except BaseException:
        if wait:  # the run's end is in the store before the error goes on (errors: its own)
            with contextlib.suppress(Exception):
                setup.store.sync()
        raise
    if wait:
        setup.store.sync()  # the run is in the store when this returns
    else:
        setup.store.check()
    result = Outcome(run, outcome.status, monitor.final, outcome.engine, outcome.failure)
    if not quiet:
        fitted = (setup.optimum.w.cpu().tolist(), setup.optimum.b)
        console.summary(result, setup.data, model, setup.tracking, fitted)
    return result


def _train_as_rank(cfg: DictConfig, world: World, data_source: DataSource | None) -> None:
    """A rank other than 0: the same data and seeded model as rank 0, trained in step with it;
    no store, no run, nothing said but why it stopped early."""
    validate(cfg)
    trainer = build.trainer(cfg)
    try:
        data, _ = (data_source or _Fresh()).get(cfg, trainer, data_and_optimum)
        torch.set_num_threads(trainer.num_threads(data.num_samples, data.num_features))
        torch.manual_seed(trainer.seed)
        model = build.model(cfg, data.num_features)
        fit(model, build.optimizer_factory(cfg), data, trainer, lambda *args: None, world=world)
    except RankFailed as error:  # rank 0 ended training early (its run says why), or died
        console.say(f"linreg-train: {error}", file=sys.stderr)


@dataclass
class _Status:
    status: str = FINISHED
    engine: str = "?"
    failure: str | None = None


@contextmanager
def ended(run: Run):
    """End the run FINISHED, FAILED (error as a tag) or KILLED; re-raise all but divergence
    and a data-parallel rank's failure."""
    outcome = _Status()
    try:
        yield outcome
    except (Diverged, RankFailed) as error:  # the run is complete; its training failed
        outcome.status, outcome.failure = FAILED, str(error)
        end_quietly(run, FAILED, str(error))
        return
    except StopEarly as error:  # stopped on purpose (pruned): KILLED, saying why
        outcome.status, outcome.failure = KILLED, str(error)
        if error.tags:
            run.set_tags(error.tags)
        end_quietly(run, KILLED, str(error))
        return
    except KeyboardInterrupt:  # library use, where SIGINT still raises
        end_quietly(run, KILLED, "interrupted by SIGINT")
        raise
    except Interrupted as error:
        end_quietly(run, KILLED, str(error))
        raise
    except BaseException as error:
        end_quietly(run, FAILED, f"{type(error).__name__}: {error}")
        raise
    if outcome.status == FINISHED:
        end_quietly(run, FINISHED)


def end_quietly(run: Run, status: str, failure: str | None = None) -> None:
    """End the run with signals held back, so a second Ctrl-C cannot leave it RUNNING."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        run.end(status, failure)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _parameters_report(data, optimum, model) -> dict:
    """parameters.json: recovered and least-squares parameters (and the truth, where known);
    for standardized data also in the table's original units. A model of the user's own: its
    class and size, and the least-squares reference (the best *linear* fit)."""
    params = linear_parameters(model)
    if params is None:
        report = {
            "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "parameters": sum(p.numel() for p in model.parameters()),
            "features": list(data.feature_names) if data.feature_names else None,
            "least_squares": {
                "w": optimum.w.cpu().tolist(),
                "b": optimum.b,
                "loss": optimum.loss,
            },  # fmt: skip
            "module": MODULE_ARTIFACT,  # the trained module (record_end stores it)
            "code": code_folder(model),  # the package a logged model carries
        }
        if data.scaling is not None and not data.scaling.is_identity:
            s = data.scaling  # the module takes standardized columns: the model says how
            report["scaling"] = {"x_mean": s.x_mean.tolist(), "x_scale": s.x_scale.tolist(),
                                 "y_mean": float(s.y_mean),
                                 "y_scale": float(s.y_scale)}  # fmt: skip
        return report
    w, b = params
    w = w.cpu()
    scaled = data.scaling is not None and not data.scaling.is_identity
    report = {
        "units": "standardized (see original_units)" if scaled else "the data's own",
        "features": list(data.feature_names) if data.feature_names else None,
        "recovered": {"w": w.tolist(), "b": b},
        "least_squares": {"w": optimum.w.cpu().tolist(), "b": optimum.b, "loss": optimum.loss},
    }
    if data.has_truth:
        report["true"] = {"w": data.true_w.tolist(), "b": data.true_b}
        report["error"] = {
            "w_l2": float(torch.linalg.vector_norm(w - data.true_w)),
            "b_abs": abs(b - data.true_b),
        }
    if scaled:
        original = {}
        for name, (w_, b_) in {
            "recovered": (w, b),
            "least_squares": (optimum.w, optimum.b),
        }.items():
            w_orig, b_orig = data.scaling.original_units(w_.cpu().double().numpy(), b_)
            original[name] = {"w": w_orig.tolist(), "b": b_orig}
        report["original_units"] = original
    return report


def _git_tags() -> dict[str, str]:
    """The commit (and whether the work tree differs) of the code this process loaded: asked
    of git once per process, not once per run of a sweep (two git calls, ~5 ms); asked again
    while git has not answered."""
    if not _git_seen:
        _git_seen.update(_ask_git())
    return dict(_git_seen)


_git_seen: dict[str, str] = {}


def _ask_git() -> dict[str, str]:
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
