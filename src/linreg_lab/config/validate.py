"""Value checks on the composed config, run before anything is created.

Types are already enforced by the schemas; these catch values a type cannot express. Each
failure is one line: the setting, the value given, what is allowed.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

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


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first setting whose value is not allowed."""
    check_targets(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
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
