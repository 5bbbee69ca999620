"""sweep/compose_once.py uses Hydra's private API: these fail loudly on a version where the
configs it hands over are no longer exactly what Hydra composes."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir

import linreg_lab.config  # noqa: F401  # registers the linreg.root resolver
from linreg_lab.paths import CONF_DIR


def test_the_private_api_is_where_it_was():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    assert callable(ConfigLoaderImpl._apply_overrides_to_config) and callable(get_overrides_dirname)


JOB_SEQUENCES = [
    # recomposed from the first job: plain values only
    (1, [["optimizer.lr=0.1", "trainer.batch_size=10"],
         ["optimizer.lr=0.01", "trainer.batch_size=32"],
         ["optimizer.lr=1e-3", "trainer.batch_size=10"],
         ["optimizer.lr='${optimizer.momentum}'", "trainer.batch_size=7"]]),
    # a string that parses as a float, a bool, an experiment preset kept, a forced add kept
    (1, [["experiment=lr_batch_grid", "++trainer.epochs=1", "tracking.run_name=a",
          "optimizer.nesterov=false"],
         ["experiment=lr_batch_grid", "++trainer.epochs=1", "tracking.run_name=1.5",
          "optimizer.nesterov=true"]]),
    # composed by Hydra: a forced add, a config group, a hydra key
    (2, [["++trainer.epochs=1"], ["++trainer.epochs=2"]]),
    (2, [["optimizer=sgd", "optimizer.lr=0.1"], ["optimizer=adam", "optimizer.lr=0.1"]]),
    # a string where a number was: Hydra composes it too (the run's validation refuses it)
    (1, [["optimizer.lr=0.1"], ["optimizer.lr=abc"]]),
    (2, [["hydra.job.chdir=false", "optimizer.lr=0.1"],
         ["hydra.job.chdir=true", "optimizer.lr=0.2"]]),
]  # fmt: skip


@pytest.mark.parametrize("compositions,jobs", JOB_SEQUENCES)
def test_recomposed_jobs_are_what_hydra_composes(compositions, jobs):
    """Each job's config, recomposed from an earlier one or not, equals Hydra's composition."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from linreg_lab.sweep.compose_once import compose_each_job_once

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["hydra.sweep.dir=x"], RunMode.MULTIRUN)
        hydra_compose = loader.load_sweep_config
        composed = []

        def counted(master_config, overrides):
            composed.append(overrides)
            return hydra_compose(master_config, overrides)

        loader.load_sweep_config = counted
        compose_each_job_once(loader)
        for overrides in jobs:
            try:
                expected = OmegaConf.to_yaml(hydra_compose(master, overrides))
            except ConfigCompositionException:
                with pytest.raises(ConfigCompositionException):
                    loader.load_sweep_config(master, overrides)
                continue
            got = loader.load_sweep_config(master, overrides)
            assert OmegaConf.to_yaml(got) == expected, overrides
            assert OmegaConf.to_yaml(loader.load_sweep_config(master, overrides)) == expected
        assert len(composed) == compositions


def test_a_pickled_config_loader_leaves_its_kept_configs_behind():
    """joblib and submitit send the config loader to their workers: without the configs."""
    import pickle

    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from linreg_lab.sweep.compose_once import compose_each_job_once

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["hydra.sweep.dir=x"], RunMode.MULTIRUN)
        bare = len(pickle.dumps(loader))
        compose_each_job_once(loader)
        for lr in (0.1, 0.2, 0.3, 0.4):  # validated, not launched yet: all four kept
            loader.load_sweep_config(master, [f"optimizer.lr={lr}"])
        blob = pickle.dumps(loader)
        assert len(blob) < 1.2 * bare
        worker = pickle.loads(blob)
        master = worker.load_configuration("config", ["hydra.sweep.dir=x"], RunMode.MULTIRUN)
        assert worker.load_sweep_config(master, ["optimizer.lr=0.5"]).optimizer.lr == 0.5
