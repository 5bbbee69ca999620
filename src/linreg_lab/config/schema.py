"""Structured-config schemas: a wrong type fails at composition, naming the key.

Each YAML option in conf/ lists its schema first in its defaults list
(`/<group>_<option>_schema@_here_`), so Hydra merges the file onto a typed node.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Engine(str, Enum):
    auto = "auto"
    analytic = "analytic"
    autograd = "autograd"


@dataclass
class SyntheticDatasetSchema:
    _target_: str = "linreg_lab.data.make_synthetic_regression"
    true_w: Optional[List[float]] = None
    true_b: float = 0.0
    num_features: Optional[int] = None
    num_samples: int = 1000
    noise_std: float = 0.01
    seed: int = 0


@dataclass
class LinearModuleSchema:
    _target_: str = "torch.nn.Linear"
    in_features: int = MISSING
    out_features: int = 1
    bias: bool = True


@dataclass
class LinearModelSchema:
    _target_: str = "linreg_lab.model.init_linear"
    module: LinearModuleSchema = field(default_factory=LinearModuleSchema)
    weight_std: float = 0.01
    bias_init: float = 0.0


@dataclass
class SGDSchema:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.03
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class AdamSchema:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False


@dataclass
class TrainerSchema:
    _target_: str = "linreg_lab.training.TrainerSettings"
    epochs: int = 3
    batch_size: int = 10
    shuffle: bool = True
    seed: int = 42
    device: Device = Device.auto
    engine: Engine = Engine.auto
    threads: Any = "auto"


@dataclass
class TrackingSchema:
    _target_: str = "linreg_lab.tracking.store.TrackingSettings"
    uri: str = MISSING
    artifact_location: Optional[str] = None
    experiment_name: str = "linreg"
    run_name: Optional[str] = None
    log_weights_up_to: int = 10
    log_model: bool = False
    log_plots: bool = True


SCHEMAS = {
    ("dataset", "synthetic"): SyntheticDatasetSchema,
    ("model", "linear"): LinearModelSchema,
    ("optimizer", "sgd"): SGDSchema,
    ("optimizer", "adam"): AdamSchema,
    ("trainer", "default"): TrainerSchema,
    ("tracking", "local"): TrackingSchema,
    ("tracking", "server"): TrackingSchema,
}


def register_schemas() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        # Root-level names, not a group: `--help` lists only the groups a user picks from.
        store.store(name=f"{group}_{name}_schema", node=node)
