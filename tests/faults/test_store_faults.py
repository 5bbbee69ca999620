"""Faults of the store: what it says afterwards is true, read back through the MLflow client."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest

from tests.conftest import BIN, _env

pytestmark = pytest.mark.slow


def test_commands_racing_on_a_new_store_all_land(fresh_store):
    """MLflow's migrations raced and left the store broken for good; a file lock serialises
    its creation."""
    commands = [
        subprocess.Popen(
            [
                str(BIN / "linreg-train"),
                "-m",
                f"optimizer.lr={lr},{lr * 2}",
                "trainer.epochs=1",
                "tracking.log_plots=false",
            ],
            cwd=fresh_store.root,
            env=_env(fresh_store.uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for lr in (0.01, 0.02, 0.03, 0.04)
    ]
    for command in commands:
        out, err = command.communicate(timeout=300)
        assert command.returncode == 0, err[-3000:]
    runs = fresh_store.all_runs()  # the store opens
    assert len(runs) == 4 + 8
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
