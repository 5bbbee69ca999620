"""Value checks on the composed config, run before anything is created.

Types are already enforced by the schemas; these catch values a type cannot express. Each
failure is one line: the setting, the value given, what is allowed.
"""

from __future__ import annotations

import functools
import math

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

# Instantiation is limited to these modules: a config file cannot run arbitrary code.
ALLOWED_TARGET_PREFIXES = ("torch.nn.", "torch.optim.", "linreg_lab.")


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


def check_targets(cfg: DictConfig, path: str = "") -> None:
    """Every _target_ in cfg must name something in torch.nn, torch.optim or linreg_lab."""
    for key, node in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else []:
        full_key = f"{path}.{key}" if path else str(key)
        if key == "_target_" and not str(node).startswith(ALLOWED_TARGET_PREFIXES):
            _fail(
                full_key, node, "only torch.nn.*, torch.optim.* or linreg_lab.* may be instantiated"
            )
        elif isinstance(node, DictConfig):
            check_targets(node, full_key)


def check_arguments(cfg: DictConfig, path: str = "") -> None:
    """Every key of a node with a _target_ must be an argument its target takes.

    The schemas refuse a misspelled key, but not one added with `+` (`+optimizer.lrr=0.1`),
    which would otherwise fail as a TypeError once the run has started. A target is imported
    only for keys its schema does not list (torch.optim alone takes ~1 s to import).
    """
    if not isinstance(cfg, DictConfig):
        return
    target = cfg.get("_target_") if "_target_" in cfg else None
    keys = [str(k) for k in cfg.keys() if not str(k).startswith("_")]
    if target is not None and not set(keys) <= _schema_arguments().get(str(target), set()):
        accepted = _arguments_of(str(target))
        for key in keys:
            if accepted is not None and key not in accepted:
                full_key = f"{path}.{key}" if path else key
                _fail(
                    full_key, cfg._get_node(key)._value(),  # unresolved: it may be ??? or ${..}
                    f"{target} takes no argument {key!r}; it takes {', '.join(sorted(accepted))}",
                )  # fmt: skip
    for key in cfg.keys():
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            check_arguments(node, f"{path}.{key}" if path else str(key))


@functools.cache
def _schema_arguments() -> dict[str, set[str]]:
    """The arguments each schema's target is known to take (its fields), by target."""
    from dataclasses import fields

    from linreg_lab.config.schema import SCHEMAS

    known: dict[str, set[str]] = {}
    for schema in SCHEMAS.values():
        names = {f.name for f in fields(schema) if not f.name.startswith("_")}
        known.setdefault(schema._target_, set()).update(names)
    return known


def _arguments_of(target: str) -> set[str] | None:
    """The keyword arguments target accepts; None when it takes any (**kwargs) or cannot say."""
    import inspect

    from hydra.utils import get_object

    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except Exception:  # not importable, or no signature: instantiation will say so itself
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    positional_only = inspect.Parameter.POSITIONAL_ONLY
    # An optimizer's params are the model's, given when it is built: never a setting.
    given = {"self", "params"} if target.startswith("torch.optim.") else {"self"}
    return {p.name for p in parameters if p.kind is not positional_only and p.name not in given}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first setting whose value is not allowed."""
    try:
        _validate(cfg)
    except (InterpolationResolutionError, MissingMandatoryValue) as error:  # ${nope}, ???
        raise ConfigError(f"{error.full_key}: {str(error).splitlines()[0]}") from None


def _validate(cfg: DictConfig) -> None:
    without_hydra = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    check_targets(without_hydra)
    check_arguments(without_hydra)
    _check_dataset(cfg)
    _check_model(cfg)
    _check_optimizer(cfg)
    _check_trainer(cfg)
    _check_tracking(cfg)


def _check_dataset(cfg: DictConfig) -> None:
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
    size = cfg.dataset.num_samples * (num_features or len(true_w))
    if size > 4 * 10**9:
        _fail("dataset.num_samples", cfg.dataset.num_samples, "num_samples x num_features <= 4e9")


def _check_model(cfg: DictConfig) -> None:
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
    if threads != "auto" and not (str(threads).isdigit() and int(threads) >= 1):
        _fail("trainer.threads", threads, "auto or an integer >= 1")
    if str(cfg.trainer.device) in ("cuda", "Device.cuda"):
        import torch

        if not torch.cuda.is_available():
            _fail("trainer.device", "cuda", "auto or cpu: no CUDA device is available here")


def _check_tracking(cfg: DictConfig) -> None:
    uri = cfg.tracking.uri
    if not uri or not any(
        uri.startswith(s) for s in ("sqlite:///", "http://", "https://", "postgresql", "mysql")
    ):
        _fail("tracking.uri", uri, "sqlite:///<path>, http(s)://<server> or a database URL")
    if not cfg.tracking.experiment_name:
        _fail("tracking.experiment_name", cfg.tracking.experiment_name, "a non-empty name")
    _number(cfg, "tracking.log_weights_up_to", 0, strict=False, integer=True)
