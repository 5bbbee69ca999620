"""Checks on the composed config, run before anything is created.

The YAML files in conf/ are the one source of every default. Types come from the targets
themselves: each key of a node with a `_target_` must be an argument of that target, with a
value its signature's annotation accepts (torch.optim's own, TrainerSettings' fields, ...). The
value checks below catch what a type cannot express. Each failure is one line: the setting,
the value given, what is allowed.
"""

from __future__ import annotations

import collections.abc
import functools
import math

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from linreg_lab.config.nodes import task_container
from linreg_lab.data import DataError, split_fractions
from linreg_lab.engines.settings import COMPILED, DEVICES, ENGINES
from linreg_lab.tables import MISSING_CHOICES

# Instantiation is limited to these modules, and to the packages a user declares (not a config
# file: a config file cannot run arbitrary code): an installed package's entry point in the
# group TARGETS_ENTRY_POINTS (name = its module), or the environment's ENV_TARGETS.
ALLOWED_TARGET_PREFIXES = ("torch.nn.", "torch.optim.", "linreg_lab.")
TARGETS_ENTRY_POINTS = "linreg_lab.targets"
ENV_TARGETS = "LINREG_TARGETS"  # comma-separated modules, e.g. LINREG_TARGETS=mylab


@functools.cache
def _declared_by_packages() -> tuple[str, ...]:
    """The modules installed packages declare (a scan of every installed package: once)."""
    from importlib.metadata import entry_points

    return tuple(e.value for e in entry_points(group=TARGETS_ENTRY_POINTS))


def allowed_target_prefixes() -> tuple[str, ...]:
    """linreg-lab's own, and each declared package's module: 'mylab.'."""
    import os

    declared = [*_declared_by_packages(), *os.environ.get(ENV_TARGETS, "").split(",")]
    extra = [f"{name.strip().rstrip('.')}." for name in declared if name.strip()]
    return ALLOWED_TARGET_PREFIXES + tuple(dict.fromkeys(extra))


class ConfigError(ValueError):
    """A setting with a value that is not allowed; str() is the one line shown to the user."""


def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"{key}={_show(value)} is not allowed: {allowed}")


def _show(value) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return str(value).replace(" ", "") if isinstance(value, list) else str(value)


def _number(cfg: DictConfig, key: str, low: float, *, strict: bool, integer: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
        and (not integer or float(value).is_integer())
    )
    if not ok:
        kind = "an integer" if integer else "a finite number"
        _fail(key, value, f"must be {kind} {'>' if strict else '>='} {low:g}")


def check_targets(node, path: str = "", allowed: tuple[str, ...] | None = None) -> None:
    """Every _target_ in node (a plain, unresolved container) must name something in torch.nn,
    torch.optim or linreg_lab."""
    if isinstance(node, dict):
        allowed = allowed if allowed is not None else allowed_target_prefixes()
        for key, value in node.items():
            full_key = f"{path}.{key}" if path else str(key)
            if key == "_target_" and not str(value).startswith(allowed):
                declared = ", ".join(f"{p}*" for p in allowed[len(ALLOWED_TARGET_PREFIXES) :])
                _fail(
                    full_key, value,
                    "only torch.nn.*, torch.optim.* or linreg_lab.* may be instantiated"
                    + (f", and the declared {declared}" if declared else "")
                    + f"; declare your package with {ENV_TARGETS}=<module> or an entry point "
                    f"in the group {TARGETS_ENTRY_POINTS!r} (README: your own data and configs)",
                )  # fmt: skip
            check_targets(value, full_key, allowed)


def check_arguments(node, path: str = "") -> None:
    """Every key of a node with a _target_ must be an argument its target takes, with a value
    of the type the target declares (its signature's annotations).

    A key the target does not take would otherwise fail as a TypeError once the run has
    started; node is the plain config, unresolved (a value may be ??? or ${...})."""
    if not isinstance(node, dict):
        return
    target = node.get("_target_")
    if target is not None:
        _check_node(str(target), node, path)
    for key, value in node.items():
        check_arguments(value, f"{path}.{key}" if path else str(key))


def _check_node(target: str, node: dict, path: str) -> None:
    signature = _signature_of(target)
    if signature is None:  # not importable, or no signature: instantiation will say so
        return
    accepted, hints = signature
    keys = [str(k) for k in node if not str(k).startswith("_")]
    unknown = [k for k in keys if accepted is not None and k not in accepted]
    if unknown:
        where = f"{path}." if path else ""
        removal = " ".join(f"~{where}{k}" for k in unknown)
        _fail(
            f"{where}{unknown[0]}", node[unknown[0]],
            f"{target} takes no argument {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(sorted(accepted))} (remove with {removal})",
        )  # fmt: skip
    for key in keys:
        value = node[key]
        full_key = f"{path}.{key}" if path else key
        if key in hints and not _unresolved(value) and not _accepts(hints[key], value):
            _fail(full_key, value, f"{target} takes {_describe(hints[key])} for {key!r}")
        _check_range(full_key, value)


_FLOAT32_MAX = 3.4028234663852886e38


def _check_range(key: str, value) -> None:
    """Numbers must fit what they become: float32 weights and rates, int64 counts and seeds."""
    if isinstance(value, list):
        for item in value:
            _check_range(key, item)
    elif isinstance(value, float) and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        _fail(key, value, "a number within float32's range (|x| <= 3.4e38)")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        _fail(key, value, "an integer within int64's range (|x| < 2^63)")


def _unresolved(value) -> bool:
    return isinstance(value, str) and (value == "???" or "${" in value)


@functools.cache
def _parameters_of(target: str):
    """(target's object, its signature's parameters), or None when it cannot be imported or
    inspected."""
    import inspect

    from hydra.utils import get_object

    try:
        function = get_object(target)
        return function, tuple(inspect.signature(function).parameters.values())
    except Exception:
        return None


@functools.cache
def _signature_of(target: str):
    """(the keyword arguments target accepts, or None for **kwargs; their annotations), or None
    when target cannot be imported or inspected."""
    import inspect
    import typing

    found = _parameters_of(target)
    if found is None:
        return None
    function, parameters = found
    try:
        hints = typing.get_type_hints(function.__init__ if inspect.isclass(function) else function)
    except Exception:  # annotations naming what cannot be resolved here: types unchecked
        hints = {}
    # An optimizer's params are the model's, given when it is built: never a setting.
    given = {"self", "params"} if target.startswith("torch.optim.") else {"self"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        accepted = None
    else:
        accepted = {
            p.name for p in parameters
            if p.kind is not inspect.Parameter.POSITIONAL_ONLY and p.name not in given
        }  # fmt: skip
    return accepted, {k: v for k, v in hints.items() if k not in given and k != "return"}


def _accepts(annotation, value) -> bool:
    """Whether a YAML value (None, bool, int, float, str, list or dict) fits annotation."""
    import types
    import typing

    if annotation is typing.Any or isinstance(value, dict):  # a dict: a nested config
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(option, value) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:  # a name may read as a number: dataset.target=2020
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence) or annotation in (
        list, tuple,
    ):  # fmt: skip
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not isinstance(value, list):
            return False
        if origin is tuple and len(args) > 1:
            return len(value) == len(args) and all(map(_accepts, args, value))
        return not args or all(_accepts(args[0], v) for v in value)
    return False  # a tensor, a callable, a class: no YAML value is one


def _describe(annotation) -> str:
    import typing

    if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType):
        names = [_describe(a) for a in typing.get_args(annotation)]
        return " or ".join(n for n in names if n)
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) in (list, tuple, typing.Sequence):
        args = typing.get_args(annotation) or (None,)
        plural = {float: "numbers", int: "integers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], 'values')}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
    )


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first setting whose value is not allowed. A key left out or
    deleted (`~trainer.threads`, a user's file without it) is its target's own default."""
    try:
        raw = task_container(cfg, resolve=False)  # Hydra's own node is not the user's to check
        check_targets(raw)
        check_arguments(raw)  # what the user wrote; the defaults filled in below are the target's
        _validate(completed(cfg))
    except (InterpolationResolutionError, MissingMandatoryValue) as error:  # ${nope}, ???
        raise ConfigError(f"{error.full_key}: {str(error).splitlines()[0]}") from None


def completed(cfg: DictConfig) -> DictConfig:
    """cfg, or where a node with a `_target_` leaves out an argument its target has a default
    for (what instantiate will use), a copy that holds it: the checks read every setting the
    run will have. Nothing is copied when nothing is left out (every job of a sweep is checked)."""
    missing = []
    for key in cfg:
        if key != "hydra" and _is_node(cfg, key):
            _left_out(cfg[key], str(key), missing)
    if not missing:
        return cfg
    copy = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.set_struct(copy, False)
    for path, default in missing:
        OmegaConf.update(copy, path, default, force_add=True)
    return copy


def _is_node(node: DictConfig, key) -> bool:
    """node[key] is a config node of its own (read without resolving interpolations)."""
    if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
        return False
    return OmegaConf.is_dict(node[key])


def _left_out(node: DictConfig, path: str, missing: list) -> None:
    target = None
    if "_target_" in node and not OmegaConf.is_interpolation(node, "_target_"):
        target = node["_target_"]
    if isinstance(target, str) and target.startswith("linreg_lab."):  # the keys checks read
        defaults = _defaults_of(target).items()
        missing.extend((f"{path}.{key}", value) for key, value in defaults if key not in node)
    for key in node:
        if not str(key).startswith("_") and _is_node(node, key):
            _left_out(node[key], f"{path}.{key}", missing)


@functools.cache
def _defaults_of(target: str) -> dict:
    """The keyword arguments target has a default for, with plain values (None, numbers,
    strings, booleans, lists of them): what instantiate uses for a key that is left out."""
    import dataclasses
    import inspect

    plain = (type(None), bool, int, float, str)
    found = _parameters_of(target)
    if found is None:
        return {}
    function, parameters = found
    defaults = {}
    for parameter in parameters:
        default = parameter.default
        if default is inspect.Parameter.empty or parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD
        ):  # fmt: skip
            continue
        if isinstance(default, plain) or (
            isinstance(default, list | tuple) and all(isinstance(v, plain) for v in default)
        ):
            defaults[parameter.name] = list(default) if isinstance(default, tuple) else default
    if dataclasses.is_dataclass(function):  # fields with a default_factory
        for field in dataclasses.fields(function):
            if field.default_factory is not dataclasses.MISSING and field.name not in defaults:
                value = field.default_factory()
                if isinstance(value, plain):
                    defaults[field.name] = value
    return defaults


def _validate(cfg: DictConfig) -> None:
    _check_dataset(cfg)
    _check_model(cfg)
    _check_optimizer(cfg)
    _check_trainer(cfg)
    _check_tracking(cfg)


def _check_dataset(cfg: DictConfig) -> None:
    target = str(OmegaConf.select(cfg, "dataset._target_", default=""))
    if OmegaConf.select(cfg, "dataset.split", default=None) is not None:
        _check_split(cfg)
    if target == "linreg_lab.data.make_synthetic_regression":
        _check_synthetic(cfg)
    elif target == "linreg_lab.tables.load_table":
        for key in ("path", "target"):
            value = OmegaConf.select(cfg, f"dataset.{key}", default=None)
            if value in (None, "", "???"):
                _fail(f"dataset.{key}", "???", f"set it: dataset=table needs dataset.{key}=...")
        missing = OmegaConf.select(cfg, "dataset.missing", default="error")
        if missing not in MISSING_CHOICES:
            _fail("dataset.missing", missing, " or ".join(MISSING_CHOICES))


def _check_split(cfg: DictConfig) -> None:
    """The data's own check of dataset.split, before anything starts."""
    try:
        split_fractions(OmegaConf.to_container(cfg.dataset.split, resolve=True))
    except DataError as error:
        raise ConfigError(str(error)) from None


def _check_synthetic(cfg: DictConfig) -> None:
    _number(cfg, "dataset.num_samples", 1, strict=False, integer=True)
    _number(cfg, "dataset.noise_std", 0, strict=False)
    _number(cfg, "dataset.true_b", -math.inf, strict=True)
    num_features = cfg.dataset.num_features
    if num_features is not None:
        _number(cfg, "dataset.num_features", 1, strict=False, integer=True)
    true_w = cfg.dataset.true_w
    if num_features is None:
        if true_w is None or len(true_w) == 0:
            _fail(
                "dataset.true_w", true_w, "a non-empty list of numbers, or set dataset.num_features"
            )
    if true_w is not None and not all(math.isfinite(v) for v in true_w):
        _fail("dataset.true_w", true_w, "every weight must be a finite number")
    n, d = cfg.dataset.num_samples, num_features or len(true_w)
    memory = _memory_bytes()
    data_bytes = 4 * n * (d + 1)  # float32 rows with their targets
    if data_bytes > memory:
        _fail(
            "dataset.num_samples", n,
            f"num_samples x (num_features + 1) float32 values need {data_bytes / 2**30:.1f} GiB; "
            f"this machine has {memory / 2**30:.1f} GiB",
        )  # fmt: skip
    normal_equations = 3 * 8 * (d + 1) ** 2  # the float64 Gram matrix, its solve and a copy
    if normal_equations > memory / 2:
        _fail(
            "dataset.num_features", d,
            f"the least-squares reference's {d + 1} x {d + 1} float64 normal equations need "
            f"{normal_equations / 2**30:.1f} GiB; this machine has {memory / 2**30:.1f} GiB",
        )  # fmt: skip


def _memory_bytes() -> int:
    import psutil

    return psutil.virtual_memory().total


def _check_model(cfg: DictConfig) -> None:
    raw = OmegaConf.to_container(cfg.model, resolve=False) if "model" in cfg else {}
    in_features = (
        raw.get("module", {}).get("in_features", "???") if isinstance(raw, dict) else "???"
    )
    if in_features != "???":
        _fail("model.module.in_features", in_features, "??? (it comes from the dataset's features)")
    out_features = OmegaConf.select(cfg, "model.module.out_features", default=1)
    if out_features != 1:
        _fail("model.module.out_features", out_features, "1: the dataset has one target")
    if "weight_std" in cfg.model:
        _number(cfg, "model.weight_std", 0, strict=False)
        _number(cfg, "model.bias_init", -math.inf, strict=True)


def _check_optimizer(cfg: DictConfig) -> None:
    _number(cfg, "optimizer.lr", 0, strict=True)
    for key in ("weight_decay", "momentum", "dampening"):
        if key in cfg.optimizer:
            _number(cfg, f"optimizer.{key}", 0, strict=False)
    if "momentum" in cfg.optimizer and cfg.optimizer.momentum >= 1:
        _fail("optimizer.momentum", cfg.optimizer.momentum, "must be in [0, 1)")
    if cfg.optimizer.get("nesterov") and (
        cfg.optimizer.momentum <= 0 or cfg.optimizer.dampening != 0
    ):
        _fail("optimizer.nesterov", True, "needs optimizer.momentum > 0 and optimizer.dampening=0")
    if "betas" in cfg.optimizer:
        betas = cfg.optimizer.betas
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            _fail("optimizer.betas", betas, "two numbers in [0, 1)")
        _number(cfg, "optimizer.eps", 0, strict=True)


def _check_trainer(cfg: DictConfig) -> None:
    _number(cfg, "trainer.epochs", 1, strict=False, integer=True)
    _number(cfg, "trainer.batch_size", 1, strict=False, integer=True)
    threads = cfg.trainer.threads
    if threads != "auto" and not (str(threads).isdigit() and 1 <= int(threads) <= 1024):
        _fail("trainer.threads", threads, "auto or an integer from 1 to 1024")
    for key, allowed in (("engine", ENGINES), ("device", DEVICES), ("compiled", COMPILED)):
        value = str(OmegaConf.select(cfg, f"trainer.{key}", default="auto")).lower()
        if value not in allowed:
            _fail(f"trainer.{key}", value, f"one of {', '.join(allowed)}")
    processes = OmegaConf.select(cfg, "trainer.processes", default=1)
    if not (
        isinstance(processes, int) and not isinstance(processes, bool) and 1 <= processes <= 256
    ):
        _fail("trainer.processes", processes, "an integer from 1 to 256 (ranks on this machine)")
    if processes > 1 and str(cfg.trainer.device) == "cuda":
        _fail("trainer.device", "cuda", f"cpu or auto with trainer.processes={processes}: "
              "data-parallel ranks train on the CPU (gloo)")  # fmt: skip
    if str(cfg.trainer.device) == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("trainer.device", "cuda", "auto or cpu: no CUDA device is available here")


# MLflow's artifact stores by URI scheme: the module each needs, and its package.
_ARTIFACT_PACKAGES = {
    "s3": ("boto3", "boto3"),
    "gs": ("google.cloud.storage", "google-cloud-storage"),
    "wasbs": ("azure.storage.blob", "azure-storage-blob"),
}


def _check_tracking(cfg: DictConfig) -> None:
    for key in ("run_name", "experiment_name"):  # ${nosuch.key} in them: one line, not a traceback
        OmegaConf.select(cfg, f"tracking.{key}", default=None, throw_on_resolution_failure=True)
    uri = cfg.tracking.uri
    if not uri or not any(
        uri.startswith(s) for s in ("sqlite:///", "http://", "https://", "postgresql", "mysql")
    ):
        _fail("tracking.uri", uri, "sqlite:///<path>, http(s)://<server> or a database URL")
    location = OmegaConf.select(cfg, "tracking.artifact_location", default=None)
    scheme = str(location).split("://", 1)[0] if location and "://" in str(location) else None
    needed = _ARTIFACT_PACKAGES.get(scheme)
    if needed is not None:
        import importlib.util

        module, package = needed
        if importlib.util.find_spec(module.split(".")[0]) is None:
            _fail(
                "tracking.artifact_location", location,
                f"{scheme}:// artifacts need {package} installed (.venv/bin/pip install "
                f"{package}), or let a tracking server proxy them (tracking=server)",
            )  # fmt: skip
    if not cfg.tracking.experiment_name:
        _fail("tracking.experiment_name", cfg.tracking.experiment_name, "a non-empty name")
    _number(cfg, "tracking.log_weights_up_to", 0, strict=False, integer=True)
