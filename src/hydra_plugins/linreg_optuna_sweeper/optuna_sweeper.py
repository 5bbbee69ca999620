"""hydra/sweeper=optuna: an Optuna study as a Hydra sweeper, on Optuna's public ask-and-tell
API (Optuna >= 4), with pruning.

The study itself (settings, search space, storage, the ask/launch/tell loop, the trials' own
reports, the study on the sweep's parent run) is linreg_lab.sweep.study; this plugin is what
Hydra needs to find it: the config node `hydra/sweeper: optuna` (the keys of Hydra's own
Optuna sweeper: direction, study_name, storage, n_trials, n_jobs, sampler, params; plus
pruner) and the Sweeper that runs the study with the sweep's launcher.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.linreg_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    direction: Any = "minimize"  # minimize or maximize the jobs' value (final val/train loss)
    study_name: Any = None  # null: <experiment>-<hash of the search>, the same for a re-run
    storage: Any = None  # null: optuna.db beside a sqlite MLflow store (./optuna.db otherwise)
    n_trials: Any = 20  # the study's total: a re-run runs the trials it still owes
    n_jobs: Any = 1  # trials asked at once (one launcher batch)
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler",
                                                  "seed": None})  # fmt: skip
    pruner: Any = None  # null, median, percentile, successive_halving, hyperband, ...
    params: Any = None  # key: interval(a, b) | tag(log, interval(a, b)) | choice(...) | range()


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="linreg-lab"
)


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # read again from the config, as composed, in the study

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from linreg_lab.sweep import callback
        from linreg_lab.sweep.study import run_study

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        run_study(self.config, arguments, self.launcher.launch, callback.current())
