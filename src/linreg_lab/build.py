"""Config nodes -> plain objects. Every hydra.utils.instantiate call of the package is here."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from linreg_lab.config.nodes import task_container
from linreg_lab.data import DataError, RegressionData
from linreg_lab.engines import choose_engine
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.tracking import TrackingSettings


def plain_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node (which resolves only inside a job)."""
    return task_container(cfg, resolve=True, enum_to_str=True)


def trainer(cfg: DictConfig) -> TrainerSettings:
    return _settings(cfg.trainer)


def tracking(cfg: DictConfig) -> TrackingSettings:
    return _settings(cfg.tracking)


# Settings are frozen dataclasses: the jobs of a sweep share one per resolved config instead of
# instantiating the same one again (~1.5-5 ms each, several times a job). Whatever else a
# node's _target_ makes (something mutable) is made afresh each time.
_MAX_SETTINGS = 256
_settings_made: dict[str, object] = {}


def _settings(node: DictConfig):
    key = json.dumps(OmegaConf.to_container(node, resolve=True), sort_keys=True, default=str)
    made = _settings_made.get(key)
    if made is None:
        made = instantiate(node)
        if not _frozen(made):
            return made
        if len(_settings_made) >= _MAX_SETTINGS:
            _settings_made.pop(next(iter(_settings_made)))
        _settings_made[key] = made
    return made


def _frozen(value) -> bool:
    """A frozen dataclass instance: assigning a field its own value raises FrozenInstanceError."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return False
    fields = dataclasses.fields(value)
    if not fields:
        return False  # nothing it holds could change, and nothing to try
    name = fields[0].name
    try:
        setattr(value, name, getattr(value, name))
    except dataclasses.FrozenInstanceError:
        return True
    return False


def dataset(cfg: DictConfig) -> RegressionData:
    """The data; a DataError (a missing file, a bad column) is raised as itself, not wrapped."""
    try:
        return instantiate(cfg.dataset, _convert_="all")
    except Exception as error:
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise


def model(cfg: DictConfig, in_features: int) -> nn.Module:
    return instantiate(cfg.model, module={"in_features": in_features})


def optimizer_factory(cfg: DictConfig) -> Callable:
    """A partial that takes the model's parameters (not called here: no torch.optim set-up)."""
    return instantiate(cfg.optimizer, _convert_="all")


def engine(cfg: DictConfig) -> str:
    """The engine cfg's trainer, model and optimizer select (the model's size does not matter);
    raises EngineError when trainer.engine asks for one they cannot use."""
    return choose_engine(trainer(cfg).engine, model(cfg, in_features=1), optimizer_factory(cfg))
