"""Faults of sweeps: crashes mid-group, a dead sweep process, odd sweep syntax."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest

from tests.conftest import BIN, Store, _env
from tests.test_failures import start_in_group, wait_for_metric

pytestmark = pytest.mark.slow


def test_a_killed_vectorized_group_keeps_its_epochs(store):
    """A group's metrics reach MLflow while it trains, as a single run's do: a SIGKILL loses
    at most the last second."""

    def steps() -> dict[str, int]:
        children = [r for r in store.runs() if r.data.tags.get("linreg.sweep") != "true"]
        return {
            r.info.run_id: len(store.client.get_metric_history(r.info.run_id, "train/loss"))
            for r in children
        }

    process = start_in_group(
        store, "-m", "dataset.num_samples=20000", "trainer.epochs=100000",
        "optimizer.lr=0.01,0.02", "hydra/launcher=vectorized",
    )  # fmt: skip
    try:
        wait_for_metric(store, "linreg", count=2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # written while the group trains, not at its end
            seen = steps()
            if len(seen) == 2 and min(seen.values()) >= 2:
                break
            time.sleep(0.5)
        # ...and again within a few flushes (one a second), not only once at the start
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            count > seen[run] for run, count in steps().items()
        ):
            time.sleep(0.2)
        later = steps()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert all(later[run] > seen[run] for run in seen), (seen, later)
    after = steps()
    assert len(after) == 2
    for run_id, count in after.items():  # every epoch up to the last flush, none missing
        history = sorted(m.step for m in store.client.get_metric_history(run_id, "train/loss"))
        assert history == list(range(1, count + 1)) and count >= later[run_id]


def test_no_worker_outlives_a_killed_joblib_sweep(store):
    process = start_in_group(
        store, "-m", "dataset.num_samples=20000", "trainer.epochs=100000",
        "trainer.engine=autograd", "trainer.seed=1,2,3,4", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    try:
        wait_for_metric(store, "linreg")
        others = psutil.Process(process.pid).children(recursive=True)
        os.kill(process.pid, signal.SIGKILL)  # the sweep's process alone
        process.wait(timeout=30)
        _, alive = psutil.wait_procs(others, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing of the group left: as it should
            os.killpg(process.pid, signal.SIGKILL)
    assert alive == [], [p.cmdline()[:3] for p in alive if p.is_running()]
    # README: the workers end their running jobs KILLED; the parent, whose process is gone,
    # is ended FAILED by that process's MLflow helper (it outlives a kill of the process alone).
    runs = store.runs()
    (parent,) = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    jobs = [r for r in runs if r is not parent]
    assert jobs and {r.info.status for r in jobs} == {"KILLED"}, [
        (r.info.status, r.data.tags.get("linreg.failure")) for r in jobs]  # fmt: skip
    assert parent.info.status == "FAILED"
    assert f"process {process.pid} ended without closing" in parent.data.tags["linreg.failure"]


@pytest.mark.parametrize(
    "override,allowed",
    [("optimizer.lr=interval(0.01,0.1)", "hydra/sweeper=optuna"),
     ("optimizer.lr=tag(log,interval(0.01,0.1))", "hydra/sweeper=optuna")],
)  # fmt: skip
def test_a_sweep_syntax_the_sweeper_does_not_take_is_one_line(store, override, allowed):
    result = store.command("-m", override, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert override in line and allowed in line
    assert store.client.get_experiment_by_name("linreg") is None or not store.runs()


def test_a_glob_sweep_over_a_group_has_its_parent(store):
    result = store.command("-m", "optimizer=glob(*)", "trainer.epochs=1")
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    assert len(parents) == 1 and len(runs) == 3, result.stderr
    assert parents[0].info.status == "FINISHED"


def test_interpolations_in_swept_overrides_are_each_jobs(store):
    store.command("-m", "trainer.epochs=${dataset.seed}", "dataset.seed=1,2")
    runs = [r for r in store.runs() if r.data.tags.get("linreg.sweep") != "true"]
    assert sorted(r.data.params["trainer.epochs"] for r in runs) == ["1", "2"]
    store.command("-m", "trainer.epochs=1,${trainer.batch_size}", "trainer.batch_size=3",
                "tracking.experiment_name=second")  # fmt: skip
    parent = next(r for r in store.runs("second") if r.data.tags.get("linreg.sweep") == "true")
    assert "trainer.epochs=1,${trainer.batch_size}" in parent.data.params.values()


def test_a_stop_file_left_by_an_earlier_sweep_does_not_stop_the_next(store):
    folder = store.root / "sweep"
    folder.mkdir()
    (folder / ".linreg-stop").touch()  # an interrupted sweep's, in a fixed hydra.sweep.dir
    store.command("-m", "optimizer.lr=0.1,0.2", "trainer.epochs=1", f"hydra.sweep.dir={folder}")
    statuses = sorted(r.info.status for r in store.runs())
    assert statuses == ["FINISHED"] * 3


def test_a_relative_table_path_is_where_the_user_stands_under_chdir(store):
    (store.root / "t.csv").write_text("x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(50)))
    store.train("dataset=table", "dataset.path=t.csv", "dataset.target=y", "trainer.epochs=2",
                "hydra.job.chdir=true")  # fmt: skip
    (run,) = store.runs()
    assert run.info.status == "FINISHED"


def test_a_server_killed_mid_sweep(store):
    """The tracking server dies while a parallel sweep logs to it: the sweep stops in one line,
    leaves no process behind, and once the server is back no run of it says RUNNING."""
    from mlflow import MlflowClient

    from tests.test_server import free_port, start_server

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(store, port)
    client = MlflowClient(tracking_uri=url)
    try:
        process = subprocess.Popen(
            [str(BIN / "linreg-train"), "-m", "trainer.seed=1,2,3,4", "tracking=server",
             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dataset.num_samples=20000",
             "trainer.epochs=100000", "trainer.engine=autograd"],
            cwd=store.root, env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the sweep is logging epochs through the server
            experiment = client.get_experiment_by_name("linreg")
            logged = "metrics.`train/loss` > 0"
            if experiment and client.search_runs([experiment.experiment_id], logged):
                break
            time.sleep(0.5)
        family = psutil.Process(process.pid).children(recursive=True)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        out, err = process.communicate(timeout=180)
        code = process.returncode
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert code != 0 and "Traceback" not in err + out, (out + err)[-3000:]
    lines = [x for x in err.strip().splitlines() if x.startswith("linreg-train")]
    assert len(lines) == 1 and url in lines[0], err[-3000:]
    _, alive = psutil.wait_procs(family, timeout=30)  # workers get 10 s to end their runs
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    server = start_server(store, port)  # back: the next command closes what the dead one left
    try:
        store.train("trainer.epochs=1", "tracking=server", MLFLOW_TRACKING_URI=url)
        runs = client.search_runs([client.get_experiment_by_name("linreg").experiment_id])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert len(runs) >= 3 and "RUNNING" not in {r.info.status for r in runs}
    swept = [r for r in runs if {"mlflow.parentRunId", "linreg.sweep"} & set(r.data.tags)]
    assert len(swept) >= 3 and all(r.info.status in ("FAILED", "KILLED") for r in swept)


def test_hydra_interpolations_in_a_sweep_are_each_jobs_and_the_sweep_stays_one(store):
    """`${hydra:job.num}` (resolved per job, as in any Hydra app) used to break the sweep's
    start: Hydra turned the error into a warning and ran every job as a lone run. And Hydra's
    hydra.job.env_set moves the whole sweep (its parent too) to the store it names."""
    moved = Store(store.root / "moved")
    moved.root.mkdir()
    shutil.copy(store.root / "mlflow.db", moved.root / "mlflow.db")  # an initialised store
    result = store.command(
        "-m",
        "tracking.run_name=job${hydra:job.num}",
        "optimizer.lr=0.01,0.1",
        "trainer.epochs=1",
        f"+hydra.job.env_set.MLFLOW_TRACKING_URI={moved.uri}",
    )
    assert "UserWarning" not in result.stderr, result.stderr
    assert store.all_runs() == []  # MLFLOW_TRACKING_URI of the command's environment: unused
    runs = moved.runs()
    (parent,) = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["job0", "job1"]
    assert parent.info.status == "FINISHED"


def test_any_error_at_a_sweeps_start_stops_it_in_one_line(store):
    # The real command: its helper's close ends the parent made before the error FAILED.
    blocked = store.root / "a-file"
    blocked.write_text("not a folder")  # the sweep's folder cannot be made under it
    result = store.train("-m", "optimizer.lr=0.01,0.1", "trainer.epochs=1",
                         f"hydra.sweep.dir={blocked}/sweep", check=False)  # fmt: skip
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and "the sweep could not start" in lines[0], result.stderr
    runs = store.runs() if store.client.get_experiment_by_name("linreg") else []
    assert not [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # no job ran
    assert all(r.info.status == "FAILED" for r in runs)  # a parent made first is not RUNNING


@pytest.mark.parametrize("how", ["hydra.searchpath", "--config-dir"])
def test_a_users_own_config_group_option_sweeps(store, how):
    """A dataset option in the user's own config folder: found by the sweep's pre-check as by
    each job (hydra.searchpath was refused by the pre-check: 'Could not find dataset/mydata')."""
    (store.root / "myconf" / "dataset").mkdir(parents=True)
    (store.root / "myconf" / "dataset" / "mydata.yaml").write_text(
        "_target_: linreg_lab.data.make_synthetic_regression\n"
        "true_w: [1.0, 2.0]\ntrue_b: 0.5\nnum_samples: 500\n"
    )
    where = (["--config-dir", str(store.root / "myconf")] if how == "--config-dir"
             else [f"hydra.searchpath=[file://{store.root / 'myconf'}]"])  # fmt: skip
    store.command("-m", *where, "dataset=mydata", "optimizer.lr=0.01,0.03", "trainer.epochs=1")
    runs = store.runs()
    (parent,) = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {c.data.params["dataset.num_samples"] for c in children} == {"500"}
