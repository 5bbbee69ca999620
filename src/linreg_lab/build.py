"""Config nodes -> plain objects. Every hydra.utils.instantiate call of the package is here."""

from __future__ import annotations

from collections.abc import Callable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from linreg_lab.data import DataError, RegressionData
from linreg_lab.engines import choose_engine
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.tracking import TrackingSettings


def plain_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node (which resolves only inside a job)."""
    task_keys = [key for key in cfg if key != "hydra"]
    return OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, task_keys), resolve=True, enum_to_str=True
    )


def trainer(cfg: DictConfig) -> TrainerSettings:
    return instantiate(cfg.trainer)


def tracking(cfg: DictConfig) -> TrackingSettings:
    return instantiate(cfg.tracking)


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
