"""Optuna studies for hydra/sweeper=optuna (hydra_plugins/linreg_optuna_sweeper, a thin Hydra
Sweeper over this module): its settings and their checks, the search space from Hydra's sweep
syntax, the study's storage, the ask-and-tell loop over Hydra's launcher, each job's trial
(its epochs reported, pruned when the pruner says so), and the study logged on the sweep's
parent run. The only module that imports optuna.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from linreg_lab.config.validate import ConfigError
from linreg_lab.experiment.run import StopEarly
from linreg_lab.tracking.tags import TAG_PRUNED  # a pruned job's run: its last epoch

log = logging.getLogger(__name__)

ENV_STORAGE = "LINREG_OPTUNA_STORAGE"  # the study's storage URL, for the jobs' trials
ENV_STUDY = "LINREG_OPTUNA_STUDY"  # the study's name
ENV_PRUNER = "LINREG_OPTUNA_PRUNER"  # the pruner's spec (JSON; null: none): a job's own pruner
TAG_TRIAL = "linreg.trial"  # a job's run: its trial's number
_PRUNED_AT = "linreg.pruned_at"  # the trial's user attribute: the epoch a job was pruned at
_OWNER = "linreg.sweeper"  # the trial's user attribute: host:pid of the sweep that asked it
_SURPLUS = "linreg.surplus"  # the trial's user attribute: asked past n_trials by a racing command
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
    "patient": "PatientPruner",
    "wilcoxon": "WilcoxonPruner",
}
DIRECTIONS = ("minimize", "maximize")
_OPEN_ATTEMPTS = 5
STUDY_FILE = "optuna.db"  # beside a sqlite MLflow store, unless hydra.sweeper.storage says


@dataclass
class StudySettings:
    """hydra.sweeper as the study takes it, checked."""

    study_name: str
    storage: str
    direction: str
    n_trials: int
    n_jobs: int
    sampler: dict
    pruner: dict | None  # {"_target_": "optuna.pruners.X", ...kwargs}
    space: dict  # key -> optuna distribution
    fixed: list[str]  # overrides every job gets as they are

    def describe(self, what) -> str:
        if what is None:
            return "none"
        target = what.get("_target_", "")
        kwargs = ", ".join(f"{k}={v}" for k, v in what.items() if k != "_target_")
        return f"{target.rsplit('.', 1)[-1]}({kwargs})"


def settings_of(config: DictConfig, arguments: Sequence[str]) -> StudySettings:
    """The study's settings from the sweep's config (hydra.sweeper) and command line; raises
    ConfigError, one line naming the setting, for anything Optuna cannot take."""
    import optuna

    node = OmegaConf.select(config, "hydra.sweeper")
    sweeper = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    direction = str(sweeper.get("direction") or "minimize").lower()
    if direction not in DIRECTIONS:
        _fail("hydra.sweeper.direction", direction, "minimize or maximize")
    n_trials = sweeper.get("n_trials")
    if not _whole(n_trials) or n_trials < 1:
        _fail("hydra.sweeper.n_trials", n_trials, "a whole number >= 1 (the study's trials)")
    n_jobs = sweeper.get("n_jobs", 1)
    if not _whole(n_jobs) or n_jobs < 1:
        _fail("hydra.sweeper.n_jobs", n_jobs, "a whole number >= 1 (trials asked at once)")
    sampler = sweeper.get("sampler") or {}
    if not isinstance(sampler, dict):
        _fail("hydra.sweeper.sampler", sampler, "a mapping: _target_ (an optuna.samplers class) "
              "and its arguments, e.g. {seed: 0}")  # fmt: skip
    sampler = {"_target_": "optuna.samplers.TPESampler", **sampler}
    _check_target("hydra.sweeper.sampler", sampler, optuna.samplers, "optuna.samplers.")
    pruner = _pruner(sweeper.get("pruner"))
    if pruner is not None:
        _check_target("hydra.sweeper.pruner", pruner, optuna.pruners, "optuna.pruners.")
    space, fixed = search_space(sweeper.get("params") or {}, arguments)
    if not space:
        _fail("hydra.sweeper.params", "{}", "at least one swept key, e.g. optimizer.lr: "
              "tag(log, interval(0.001, 0.5))")  # fmt: skip
    uri = str(OmegaConf.select(config, "tracking.uri", default="") or "")
    storage = sweeper.get("storage") or default_storage(uri)
    experiment = OmegaConf.select(config, "tracking.experiment_name", default="linreg")
    name = sweeper.get("study_name") or f"{experiment}-{_digest(space, fixed, direction)}"
    return StudySettings(str(name), str(storage), direction, int(n_trials), int(n_jobs),
                         sampler, pruner, space, fixed)  # fmt: skip


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(key: str, value, allowed: str):
    raise ConfigError(f"{key}={value} is not allowed: {allowed}")


def _pruner(value) -> dict | None:
    """hydra.sweeper.pruner: null, a name (median, hyperband, ...), or a mapping with a name
    or an optuna.pruners _target_ and the pruner's arguments."""
    if value in (None, "none", "null", "nop"):
        return None
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        _fail("hydra.sweeper.pruner", value, f"null, one of {', '.join(PRUNERS)}, or a mapping")
    value = dict(value)
    name = value.pop("name", None)
    if name is not None:
        if name not in PRUNERS:
            _fail("hydra.sweeper.pruner", name, f"one of {', '.join(PRUNERS)} (Optuna's "
                  "pruners), or null")  # fmt: skip
        value["_target_"] = f"optuna.pruners.{PRUNERS[name]}"
    if "_target_" not in value:
        _fail("hydra.sweeper.pruner", value, f"a name ({', '.join(PRUNERS)}) or a _target_")
    return value


def _check_target(key: str, spec: dict, module, prefix: str) -> None:
    """spec's _target_ names a class of module, and the class takes spec's arguments."""
    target = str(spec["_target_"])
    cls = getattr(module, target.removeprefix(prefix), None) if target.startswith(prefix) else None
    if not isinstance(cls, type):
        _fail(f"{key}._target_", target, f"a class of {prefix.rstrip('.')}, e.g. "
              f"{prefix}{'TPESampler' if 'sampler' in key else 'MedianPruner'}")  # fmt: skip
    try:
        _build(spec)
    except Exception as error:  # e.g. PercentilePruner() without percentile
        text = " ".join(str(error).split()) or type(error).__name__
        _fail(key, spec, f"{cls.__name__} refused its arguments: {text}")


def _build(spec: dict | None):
    """The sampler or pruner spec names (its _target_ checked by _check_target)."""
    if spec is None:
        return None
    import optuna

    module_name, _, name = str(spec["_target_"]).rpartition(".")
    module = optuna.samplers if module_name.endswith("samplers") else optuna.pruners
    with warnings.catch_warnings():  # some are "experimental": that is Optuna's to say
        warnings.simplefilter("ignore")
        return getattr(module, name)(**{k: v for k, v in spec.items() if k != "_target_"})


def search_space(params: dict, arguments: Sequence[str]) -> tuple[dict, list[str]]:
    """(key -> Optuna distribution, fixed overrides) from hydra.sweeper.params and the command
    line, in Hydra's sweep syntax: interval(a, b) (float; int(interval(a, b)): int),
    tag(log, ...) for a log scale, choice(a, b, ...) or a,b,c (categorical), range(a, b[, s])
    (int with a step)."""
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space, fixed = {}, {}
    parser = OverridesParser.create()
    for line in lines:
        try:
            override = parser.parse_override(line)
        except Exception as error:
            raise ConfigError(f"{line}: {' '.join(str(error).split())}") from None
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed[key] = line
            space.pop(key, None)
            continue
        fixed.pop(key, None)
        value = override.value()
        tags = set(value.tags)
        unknown = tags - {"log"}
        if unknown:
            _fail(line, f"tag({', '.join(sorted(unknown))})", "tag(log, ...) is the only tag "
                  "Optuna takes (a log scale for interval and range)")  # fmt: skip
        log_scale = "log" in tags
        if isinstance(value, ChoiceSweep):
            if log_scale:
                _fail(line, "tag(log, choice(...))", "log applies to interval() and range(), "
                      "not to a choice (a categorical distribution has no scale)")  # fmt: skip
            space[key] = optuna.distributions.CategoricalDistribution(list(value.list))
        elif isinstance(value, RangeSweep):
            numbers = (value.start, value.stop, value.step)
            if not all(_whole(v) for v in numbers) or value.step <= 0 or value.stop <= value.start:
                _fail(line, "range", "range(start, stop[, step]) of whole numbers, stop > start")
            last = value.stop - 1 - (value.stop - 1 - value.start) % value.step
            try:
                space[key] = optuna.distributions.IntDistribution(
                    value.start, last, log=log_scale, step=1 if log_scale else value.step
                )
            except ValueError as error:
                _fail(line, "range", str(error))
        elif isinstance(value, IntervalSweep):
            whole = _whole(value.start) and _whole(value.end)
            kind = optuna.distributions.IntDistribution if whole else (
                optuna.distributions.FloatDistribution)  # fmt: skip
            try:
                space[key] = kind(value.start, value.end, log=log_scale)
            except ValueError as error:  # low > high, log with low <= 0
                _fail(line, "interval", " ".join(str(error).split()))
        else:
            _fail(line, type(value).__name__, "interval(), range(), choice() or a,b,c")
    return space, list(fixed.values())


def default_storage(tracking_uri: str) -> str:
    """The study's file beside a sqlite MLflow store (mlruns/optuna.db for the project's);
    ./optuna.db beside the command for any other store."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    else:
        folder = Path.cwd()
    return f"sqlite:///{folder.absolute() / STUDY_FILE}"


def _digest(space: dict, fixed: list[str], direction: str) -> str:
    import hashlib

    text = repr((sorted((k, repr(v)) for k, v in space.items()), sorted(fixed), direction))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def open_study(settings: StudySettings):
    """The study (created, or loaded to resume it); ConfigError when its storage is not
    reachable."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            if settings.storage.startswith("sqlite:///"):
                folder = Path(settings.storage.removeprefix("sqlite:///")).parent
                folder.mkdir(parents=True, exist_ok=True)
            study = optuna.create_study(
                study_name=settings.study_name, storage=settings.storage,
                sampler=_build(settings.sampler), pruner=_build(settings.pruner),
                direction=settings.direction, load_if_exists=True,
            )  # fmt: skip
            break
        except Exception as error:  # sqlalchemy's OperationalError, an unknown dialect, ...
            # Two commands creating one new storage (or study) at once: one of them loses the
            # race for its tables; it finds them made a moment later.
            racing = type(error).__name__ in ("OperationalError", "IntegrityError")
            if racing and attempt + 1 < _OPEN_ATTEMPTS:
                time.sleep(0.5 * (attempt + 1))
                continue
            from linreg_lab.tracking.store import mask_secrets

            text = " ".join(mask_secrets(str(error)).split())[:300]
            raise ConfigError(
                f"hydra.sweeper.storage={mask_secrets(settings.storage)}: the study's storage "
                f"cannot be opened ({text})"
            ) from None
    seed = settings.sampler.get("seed")
    asked = len(study.get_trials(deepcopy=False))
    if _whole(seed) and asked:  # resumed: a sampler seeded as before would draw its points again
        study.sampler = _build({**settings.sampler, "seed": seed + asked})
    return study


def _check_same_search(study, settings: StudySettings) -> None:
    """A study resumed under its name must be searched as before: the same direction, and the
    same choices for a categorical key (Optuna refuses another value space)."""
    if study.direction.name.lower() != settings.direction:
        _fail("hydra.sweeper.direction", settings.direction,
              f"study {settings.study_name} {study.direction.name.lower()}s; name a new "
              "study (hydra.sweeper.study_name) to search the other way")  # fmt: skip
    import optuna

    for trial in study.get_trials(deepcopy=False):
        for key, before in trial.distributions.items():
            now = settings.space.get(key)
            categorical = optuna.distributions.CategoricalDistribution
            if isinstance(before, categorical) and now is not None and now != before:
                _fail(key, f"choice{tuple(getattr(now, 'choices', ()))}",
                      f"study {settings.study_name} searched {key} over "
                      f"choice{tuple(before.choices)}; keep them, or name a new study "
                      "(hydra.sweeper.study_name)")  # fmt: skip
        return  # one trial shows the space the study was searched over


def owed(study, settings: StudySettings) -> int:
    """How many trials the study still owes of its n_trials."""
    return max(0, settings.n_trials - _counted(study))


def check(config: DictConfig, arguments: Sequence[str]) -> str | None:
    """Everything about the study that can be wrong, before the sweep's parent run exists
    (raises ConfigError); what to say instead of sweeping when the study owes no trial."""
    settings = settings_of(config, arguments)
    study = open_study(settings)
    _check_same_search(study, settings)
    _fail_stale(study)
    if owed(study, settings):
        return None
    from optuna.trial import TrialState

    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    return (f"the Optuna study {settings.study_name} in {_masked(settings.storage)} has all "
            f"its {settings.n_trials} trials ({pruned} pruned): nothing to run; raise "
            "hydra.sweeper.n_trials to run more")  # fmt: skip


# --- the sweep: ask, launch, tell ------------------------------------------------------------


def run_study(config: DictConfig, arguments: Sequence[str], launch: Callable, sweep) -> None:
    """Run the trials the study still owes (hydra.sweeper.n_trials is the study's total): ask
    up to n_jobs at a time, launch them as Hydra jobs, tell Optuna each one's value, or that
    it was pruned; then log the study on the sweep's parent run. launch(overrides, first
    job number) is the launcher's; sweep: the sweep's callback.Sweep (its parent run), if any."""
    from linreg_lab import signals

    settings = settings_of(config, arguments)
    study = open_study(settings)
    _fail_stale(study)
    os.environ[ENV_STORAGE], os.environ[ENV_STUDY] = settings.storage, settings.study_name
    os.environ[ENV_PRUNER] = json.dumps(settings.pruner)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    done_before = _counted(study)
    log.info(f"Optuna study {settings.study_name} in {_masked(settings.storage)}: "
             f"{done_before} of {settings.n_trials} trials done before")  # fmt: skip
    number = 0
    # This command asks at most the trials owed when it started: a trial that fails (its job
    # raised) is owed again, to the next command, not asked again here without end.
    budget = owed(study, settings)
    try:
        while not signals.stop_requested() and number < budget:
            trials = _claim(study, settings, min(settings.n_jobs, budget - number), owner)
            if not trials:
                break
            overrides = [
                [*settings.fixed, *(f"{key}={_value(v)}" for key, v in trial.params.items()),
                 f"sweep.trial={trial.number}"]
                for trial in trials
            ]  # fmt: skip
            returns = launch(overrides, number)
            number += len(trials)
            for trial, ret in zip(trials, returns):
                _tell(study, trial, ret, signals.stop_requested())
    finally:
        for name in (ENV_STORAGE, ENV_STUDY, ENV_PRUNER):
            os.environ.pop(name, None)
        _report(study, settings, sweep)


def _claim(study, settings: StudySettings, most: int, owner: str) -> list:
    """Ask up to `most` of the trials the study still owes, each marked with its sweep.
    Another command on the same study may be asking at the same instant: on a sqlite storage
    the count and the asks hold a lock beside its file, so together they ask n_trials exactly;
    on a server storage, a trial asked past n_trials (its number after the n_trials-th counted
    trial's) is told FAIL at once and not run."""
    from optuna.trial import TrialState

    with _storage_lock(settings.storage):
        trials = [study.ask(settings.space) for _ in range(min(most, owed(study, settings)))]
        for trial in trials:
            trial.set_user_attr(_OWNER, owner)
    if not trials:
        return trials
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    numbers = sorted(t.number for t in study.get_trials(deepcopy=False, states=states))
    allowed = set(numbers[: settings.n_trials])
    for trial in trials:
        if trial.number not in allowed:
            trial.set_user_attr(_SURPLUS, True)
            study.tell(trial, state=TrialState.FAIL)
    return [trial for trial in trials if trial.number in allowed]


def _storage_lock(storage: str):
    """A lock beside a sqlite study's file (every command on one machine takes it); none for a
    server storage."""
    import contextlib

    from filelock import FileLock
    from sqlalchemy.engine import make_url

    url = make_url(storage)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return contextlib.nullcontext()
    return FileLock(f"{url.database}.lock", timeout=600)


def _value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _counted(study) -> int:
    """Trials that count towards n_trials: finished (complete or pruned) or running."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _fail_stale(study) -> None:
    """Trials an earlier sweep on this host asked and never told (it was killed): FAIL, so
    that the study owes them again. A trial of a live sweep (another command on the same
    study) is left to it."""
    import psutil
    from optuna.trial import TrialState

    here = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get(_OWNER, "")).rpartition(":")
        if host == here and pid.isdigit() and not psutil.pid_exists(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)


def _tell(study, trial, ret, stopping: bool) -> None:
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    frozen = study.get_trials(deepcopy=False)[trial.number]
    if frozen.state != TrialState.RUNNING:
        return
    if _PRUNED_AT in frozen.user_attrs:
        study.tell(trial, state=TrialState.PRUNED)
        return
    value = ret.return_value if ret.status == JobStatus.COMPLETED else math.nan
    if not isinstance(value, int | float) or math.isnan(value) or (stopping and math.isinf(value)):
        study.tell(trial, state=TrialState.FAIL)  # the job failed or was stopped: owed again
        return
    study.tell(trial, float(value))


# --- a job's trial ---------------------------------------------------------------------------


def trial_reporter(number: int, epochs: int) -> Callable[[int, dict], None] | None:
    """In a job of an Optuna sweep (sweep.trial=number): report each epoch's ranking metric
    (val/loss, else train/loss) to the trial; raise StopEarly when the study's pruner says so,
    before the last of the job's epochs (a run that trained them all is complete). None
    outside an Optuna sweep (no study in the environment)."""
    storage, name = os.environ.get(ENV_STORAGE), os.environ.get(ENV_STUDY)
    if not storage or not name:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.get_storage(storage)
    # The sweep's pruner decides (load_study would give a MedianPruner to a study without one).
    pruner = _build(json.loads(os.environ.get(ENV_PRUNER) or "null"))
    pruner = pruner if pruner is not None else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(name), number
    )
    trial = optuna.trial.Trial(study, trial_id)

    def report(epoch: int, metrics: dict) -> None:
        value = metrics.get("val/loss", metrics.get("train/loss"))
        if value is None or not math.isfinite(value):
            return  # a diverged epoch: the run ends FAILED by itself
        trial.report(float(value), epoch)
        if epoch < epochs and trial.should_prune():
            trial.set_user_attr(_PRUNED_AT, epoch)
            raise StopEarly(
                f"pruned by Optuna's {type(study.pruner).__name__} at epoch {epoch} (trial "
                f"{number} of study {name})",
                {TAG_PRUNED: str(epoch)},
            )

    return report


# --- the study on the parent run -------------------------------------------------------------


def _masked(storage: str) -> str:
    from linreg_lab.tracking.store import mask_secrets

    return mask_secrets(storage)


def _report(study, settings: StudySettings, sweep) -> None:
    """Say the best trial; log the study on the sweep's parent run: its settings, trial counts
    by state, best value and parameters, and Optuna's plots."""
    from optuna.trial import TrialState

    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                            TrialState.RUNNING)}  # fmt: skip
    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        best = None
    if best is not None:
        log.info(f"Best parameters: {best.params}")
        log.info(f"Best value: {best.value}")
    if sweep is None:
        return
    parent = sweep.parent
    parent.log_params({
        "optuna.study_name": settings.study_name, "optuna.storage": _masked(settings.storage),
        "optuna.direction": settings.direction, "optuna.n_trials": settings.n_trials,
        "optuna.n_jobs": settings.n_jobs, "optuna.sampler": settings.describe(settings.sampler),
        "optuna.pruner": settings.describe(settings.pruner),
        **({f"optuna.best.{k}": v for k, v in best.params.items()} if best else {}),
    })  # fmt: skip
    metrics = {f"optuna.trials.{state}": float(n) for state, n in counts.items()}
    if best is not None and best.value is not None and math.isfinite(best.value):
        metrics["optuna.best_value"] = float(best.value)
    parent.log_metrics(metrics, step=0)
    tags = {"linreg.study": settings.study_name}
    if best is not None:
        tags["optuna.best_trial"] = str(best.number)
    parent.set_tags(tags)
    parent.log_images(_plots(study))
    parent.flush()  # before the sweep's end compares and ends the parent


def _plots(study) -> dict[str, bytes]:
    """Optuna's own plots (matplotlib) as PNGs: each one that can be drawn."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # files, never a window
    from optuna.visualization import matplotlib as plots

    images = {}
    for name, draw in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances),
                       ("intermediate_values", plots.plot_intermediate_values)):  # fmt: skip
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw(study)
                figure = getattr(axes, "figure", None) or axes.flat[0].figure
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
                import matplotlib.pyplot as plt

                plt.close(figure)
            images[f"optuna/{name}.png"] = buffer.getvalue()
        except Exception as error:  # too few trials for importances, no intermediate values
            log.debug("optuna plot %s not drawn: %s", name, error)
    return images
