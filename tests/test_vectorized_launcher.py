"""hydra/launcher=vectorized records what the basic launcher records, run for run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tests.test_config import make

from linreg_lab.launcher.grouping import group_jobs

pytestmark = pytest.mark.slow

SWEEP = ["-m", "optimizer.lr=0.01,0.1,20", "optimizer.momentum=0,0.9", "trainer.epochs=3"]


def by_overrides(store):
    runs = [r for r in store.runs() if r.data.tags.get("linreg.sweep") != "true"]
    return {r.data.tags["linreg.overrides"]: r for r in runs}


def test_same_runs_as_the_basic_launcher(tmp_path, template_store):
    from tests.conftest import Store

    stores = {}
    for launcher in ("basic", "vectorized"):
        root = tmp_path / launcher
        root.mkdir()
        (root / "mlflow.db").write_bytes(template_store.read_bytes())
        stores[launcher] = Store(root)
        stores[launcher].train(*SWEEP, f"hydra/launcher={launcher}")
    basic, vectorized = by_overrides(stores["basic"]), by_overrides(stores["vectorized"])
    assert sorted(basic) == sorted(vectorized) and len(basic) == 6
    for key, expected in basic.items():
        got = vectorized[key]
        assert got.info.status == expected.info.status, key
        assert got.info.run_name == expected.info.run_name
        differs = {"tracking.uri"}  # the two stores
        assert {k: v for k, v in got.data.params.items() if k not in differs} == {
            k: v for k, v in expected.data.params.items() if k not in differs
        }
        assert set(got.data.metrics) == set(expected.data.metrics)
        for metric in expected.data.metrics:
            ours = stores["vectorized"].client.get_metric_history(got.info.run_id, metric)
            theirs = stores["basic"].client.get_metric_history(expected.info.run_id, metric)
            assert [m.step for m in ours] == [m.step for m in theirs], (key, metric)
            for a, b in zip(ours, theirs):
                if math.isfinite(b.value):
                    assert a.value == pytest.approx(b.value, rel=2e-3, abs=1e-6), (key, metric)
        artifacts = {a.path for a in stores["vectorized"].client.list_artifacts(got.info.run_id)}
        expected_artifacts = {
            a.path for a in stores["basic"].client.list_artifacts(expected.info.run_id)
        }
        assert artifacts == expected_artifacts
    diverged = [r for r in vectorized.values() if r.info.status == "FAILED"]
    assert len(diverged) == 2 and all("diverged" in r.data.tags["linreg.failure"] for r in diverged)
    # every job still has its own Hydra output folder
    job_dirs = list(Path(stores["vectorized"].root, "multirun").glob("*/*/*/.hydra/overrides.yaml"))
    assert len(job_dirs) == 6


def test_grouping_follows_from_the_configs():
    configs = [
        make("optimizer.lr=0.1"),
        make("optimizer.lr=0.2", "optimizer.momentum=0.9"),
        make("optimizer.lr=0.1", "trainer.batch_size=32"),  # other batches: another pass
        make("optimizer=adam"),  # not the analytic engine's: alone
        make("optimizer.lr=0.3", "model.weight_std=0.1"),
        make("optimizer.lr=0.3", "dataset.seed=3"),  # other data: another pass
    ]
    assert sorted(map(sorted, group_jobs(configs))) == [[0, 1, 4], [2], [3], [5]]
    assert OmegaConf.select(configs[0], "optimizer.lr") == 0.1
