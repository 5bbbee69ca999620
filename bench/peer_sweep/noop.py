"""Hydra alone: linreg-train's config and launcher path with a task that does nothing.

bench/sweeps.py times it as the floor of what Hydra costs a job of ours (composition, the job's
folder and .hydra/ files, logging set-up): run with ~hydra.callbacks.mlflow_sweep and
+hydra.callbacks.once._target_=noop.ComposeOnce, so that each job is composed as ours are.
"""

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from linreg_lab.paths import CONF_DIR, PROJECT_ROOT
from linreg_lab.sweep.compose_once import compose_each_job_once

OmegaConf.register_new_resolver("linreg.root", lambda: str(PROJECT_ROOT), replace=True)


class ComposeOnce(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        compose_each_job_once(GlobalHydra.instance().config_loader())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    return 0.0


if __name__ == "__main__":
    main()
