"""Faults of the store: what it says afterwards is true, read back through the MLflow client."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from tests.conftest import BIN, Store, _env

pytestmark = pytest.mark.slow


# How many times a new store is raced for: once in `make test` (3 commands: single runs and a
# sweep), 20 times with LINREG_RACE_ROUNDS=20 (3 to 8 commands at once).
RACE_ROUNDS = int(os.environ.get("LINREG_RACE_ROUNDS", "1"))


@pytest.mark.parametrize("round_", range(RACE_ROUNDS))
def test_commands_racing_on_a_new_store_all_land(tmp_path, round_):
    """MLflow's migrations raced and left the store broken for good; a file lock serialises
    its creation. 2 to 8 commands at once (sweeps and single runs) on one new store."""
    fresh_store = Store(tmp_path)
    count = 3 + (round_ * 4) % 6  # 3, 7, 5, 3, 7, 5, ...: 3 to 7 commands
    commands = [
        subprocess.Popen(
            [
                str(BIN / "linreg-train"),
                # Each sweep's values its own: a job equal to another command's finished one
                # would be skipped (a re-run resumes), which is not what this counts.
                *(["-m", f"optimizer.lr={0.01 * (i + 1)},{0.011 * (i + 1)}"] if i % 2 else []),
                "trainer.epochs=1",
                "tracking.log_plots=false",
            ],
            cwd=fresh_store.root,
            env=_env(fresh_store.uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(count)
    ]
    for command in commands:
        out, err = command.communicate(timeout=600)
        assert command.returncode == 0, err[-3000:]
    runs = fresh_store.all_runs()  # the store opens
    sweeps = count // 2
    assert len(runs) == (count - sweeps) + 3 * sweeps  # every run of every command landed
    assert {r.info.status for r in runs} == {"FINISHED"}
    fresh_store.train("trainer.epochs=1")  # and takes more


def test_a_half_made_store_is_refused_with_how_to_recover(fresh_store):
    db = fresh_store.root / "mlflow.db"
    with sqlite3.connect(db) as connection:  # what an interrupted creation leaves
        connection.execute("create table experiments (experiment_id integer primary key)")
        connection.execute("create table alembic_version (version_num varchar(32))")
    result = fresh_store.train(check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "half-made" in line and f"mv {db} {db}.broken" in line


def test_an_artifact_store_it_cannot_write_fails_the_run(store):
    blocked = store.root / "a-file"
    blocked.write_text("not a folder")  # no folder can be made under it, even by root
    result = store.train(f"tracking.artifact_location={blocked}/artifacts", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    (run,) = store.runs()
    assert run.info.status == "FAILED"  # never FINISHED with records missing
    assert run.data.tags["linreg.failure"]


def test_a_remote_artifact_location_stays_a_uri(store):
    """s3://... used to become a local folder named s3%3A under the working directory."""
    result = store.train("tracking.artifact_location=s3://bucket/x", "trainer.epochs=1",
                         check=False)  # fmt: skip
    experiment = store.client.get_experiment_by_name("linreg")
    if experiment is not None:
        assert experiment.artifact_location == "s3://bucket/x"
    assert not (store.root / "s3%3A").exists() and not (store.root / "s3:").exists()
    if result.returncode != 0:  # no boto3 here: refused before any run, in one line
        assert result.returncode == 2 and "boto3" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert experiment is None or not store.runs()


def test_a_password_in_the_uri_is_never_printed(store):
    uri = "postgresql://mlflow:s3cret-pw@127.0.0.1:1/mlflow"
    result = store.train(f"tracking.uri={uri}", check=False, MLFLOW_TRACKING_URI=uri)
    assert result.returncode != 0
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "mlflow:***@127.0.0.1" in result.stderr, result.stderr


def test_a_sweep_into_a_deleted_experiment_is_one_line(store):
    store.train("trainer.epochs=1", "tracking.experiment_name=gone")
    experiment = store.client.get_experiment_by_name("gone")
    store.client.delete_experiment(experiment.experiment_id)
    for launcher in ([], ["hydra/launcher=joblib"]):
        result = store.train(
            "-m", "optimizer.lr=0.01,0.02", "trainer.epochs=1", "tracking.experiment_name=gone",
            *launcher, check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "ref:" not in result.stdout
        (line,) = [x for x in result.stderr.strip().splitlines() if "linreg" in x]
        assert "deleted" in line


def test_a_store_file_deleted_mid_run_is_reported(store):
    import os
    import signal

    from tests.test_failures import start_in_group, wait_for_metric

    process = start_in_group(store, "dataset.num_samples=20000", "trainer.epochs=300",
                             "trainer.engine=autograd")  # fmt: skip
    try:
        wait_for_metric(store, "linreg")
        os.remove(store.root / "mlflow.db")
        code = process.wait(timeout=300)
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert "deleted or replaced" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "sweep",
    [
        [],
        ["-m", "optimizer.lr=0.01,0.02"],
        ["-m", "optimizer.lr=0.01,0.02", "hydra/launcher=joblib"],
    ],  # fmt: skip
    ids=["run", "basic-sweep", "joblib-sweep"],
)
def test_a_killed_helper_fails_its_runs(store, sweep):
    """The MLflow helper killed (OOM killer, pkill): its runs end FAILED, saying so, in one line;
    not RUNNING, and not FINISHED with the records it had not written."""
    import os
    import signal

    import psutil

    from tests.test_failures import LONG_RUN, start_in_group, wait_for_metric

    process = start_in_group(store, *sweep, *LONG_RUN)
    try:
        wait_for_metric(store, "linreg")
        children = psutil.Process(process.pid).children(recursive=True)
        helpers = [p for p in children if "linreg_lab.tracking.serve" in " ".join(p.cmdline())]
        logging = {
            int(r.data.tags["linreg.pid"]) for r in store.runs("linreg", "metrics.`train/loss` > 0")
        }
        victim = [p for p in helpers if p.ppid() in logging][0]  # a training job's own helper
        victim.kill()
        code = process.wait(timeout=120)
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    lines = [x for x in err.strip().splitlines() if "linreg-train" in x]
    assert len(lines) == 1 and f"helper process {victim.pid} was killed by signal 9" in lines[0]
    runs = store.runs()
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    trained = [r for r in runs if r.data.metrics.get("train/loss")]
    assert trained and all(r.info.status == "FAILED" for r in trained)
    failures = [r.data.tags.get("linreg.failure", "") for r in runs]
    assert any(f"{victim.pid} was killed" in failure for failure in failures), [
        (r.info.status, r.data.tags.get("linreg.failure")) for r in runs
    ]
