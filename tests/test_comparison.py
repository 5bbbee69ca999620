"""A sweep's comparison on runs whose train and validation losses rank them differently: the
ranking, its title, best/* and the value a sweeper gets all follow val/loss. Runs are written
with the MLflow client into a real store and read back by the code the sweep's end runs."""

from __future__ import annotations

import csv
import io
import math

import pytest

from linreg_lab.tracking.report import compare, finished_jobs

# name, lr, train/loss, val/loss: train ranks c < a < b, validation ranks b < c < a
JOBS = [("a", "0.01", 1.0, 3.0), ("b", "0.03", 2.0, 1.5), ("c", "0.1", 0.5, 2.0)]


def make_sweep(client, name: str, with_val: bool = True):
    experiment = client.create_experiment(name)
    parent = client.create_run(experiment, run_name=f"{name}-sweep", tags={"linreg.sweep": "true"})
    for job, lr, train, val in JOBS:
        run = client.create_run(experiment, run_name=job, tags={
            "mlflow.parentRunId": parent.info.run_id, "linreg.overrides": f"optimizer.lr={lr}",
            "linreg.job_key": f"key-{job}"})  # fmt: skip
        client.log_param(run.info.run_id, "optimizer.lr", lr)
        metrics = {
            "train/loss": train,
            "error/w_l2": train / 10,
            **({"val/loss": val} if with_val else {}),
        }
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(parent.info.run_id), experiment


@pytest.fixture
def sweep(store):
    return (store.client, *make_sweep(store.client, "ranked"))


def test_a_sweep_with_a_validation_split_is_ranked_by_val_loss(sweep, capsys):
    client, parent, _ = sweep
    rows = compare(client, parent, log=True, plots=False)
    assert [row.name for row in rows] == ["b", "c", "a"]  # not c, a, b (train/loss)
    shown = capsys.readouterr().out
    assert "ranked by val/loss" in shown
    assert shown.index("0.03") < shown.index("0.1") < shown.index("0.01")
    parent = client.get_run(parent.info.run_id)
    by_name = {row.name: row for row in rows}
    assert parent.data.tags["linreg.best_run_id"] == by_name["b"].run_id
    assert parent.data.tags["linreg.best_run"] == "b"
    assert parent.data.metrics["best/val_loss"] == 1.5
    assert parent.data.metrics["best/train_loss"] == 2.0  # the best run's, not the lowest
    assert parent.data.metrics["best/error_w_l2"] == pytest.approx(0.2)
    table = client.download_artifacts(parent.info.run_id, "comparison.csv")
    ranked = list(csv.DictReader(io.StringIO(open(table).read())))
    assert [row["optimizer.lr"] for row in ranked] == ["0.03", "0.1", "0.01"]
    assert "ranked by val/loss" in parent.data.tags["mlflow.note.content"]


def test_the_value_a_rerun_reuses_is_the_val_loss(sweep):
    client, _, experiment = sweep
    found = finished_jobs(client, experiment)
    assert {key: value for key, (_, value) in found.items()} == {
        "key-a": 3.0, "key-b": 1.5, "key-c": 2.0}  # fmt: skip


def test_without_a_validation_split_train_loss_ranks(store, capsys):
    parent, _ = make_sweep(store.client, "unsplit", with_val=False)
    rows = compare(store.client, parent, log=True, plots=False)
    assert [row.name for row in rows] == ["c", "a", "b"]
    assert "ranked by train/loss" in capsys.readouterr().out
    assert store.client.get_run(parent.info.run_id).data.tags["linreg.best_run"] == "c"


def test_what_a_sweeper_gets_is_the_ranking_metric():
    from linreg_lab.experiment.run import Outcome
    from linreg_lab.tracking.tags import FAILED, FINISHED

    with_split = Outcome(None, FINISHED, {"train/loss": 0.5, "val/loss": 2.0}, "analytic")
    assert with_split.ranked_by == "val/loss" and with_split.objective == 2.0
    without = Outcome(None, FINISHED, {"train/loss": 0.5}, "analytic")
    assert without.objective == 0.5
    failed = Outcome(None, FAILED, {"train/loss": 0.5, "val/loss": 2.0}, "analytic")
    assert failed.objective == math.inf


# lr, seed, train/loss: lr 0.1 has the single best run (a lucky seed), lr 0.03 the best mean
REPLICATES = [("0.1", "1", 0.5), ("0.1", "2", 3.0), ("0.1", "3", 3.1),
              ("0.03", "1", 1.0), ("0.03", "2", 1.2), ("0.03", "3", 1.1)]  # fmt: skip


def make_replicated_sweep(client):
    experiment = client.create_experiment("replicated")
    parent = client.create_run(experiment, run_name="seeds", tags={"linreg.sweep": "true"})
    for lr, seed, loss in REPLICATES:
        run = client.create_run(experiment, run_name=f"lr={lr} seed={seed}", tags={
            "mlflow.parentRunId": parent.info.run_id,
            "linreg.overrides": f"optimizer.lr={lr} trainer.seed={seed}"})  # fmt: skip
        client.log_param(run.info.run_id, "optimizer.lr", lr)
        client.log_param(run.info.run_id, "trainer.seed", seed)
        client.log_metric(run.info.run_id, "train/loss", loss, step=1)
        client.log_metric(run.info.run_id, "error/w_l2", loss / 10, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(parent.info.run_id)


def test_replicates_are_averaged_and_the_best_mean_wins(store, capsys):
    client = store.client
    parent = make_replicated_sweep(client)
    compare(client, parent, log=True, plots=False)
    parent = client.get_run(parent.info.run_id)
    table = client.download_artifacts(parent.info.run_id, "comparison.csv")
    rows = list(csv.DictReader(io.StringIO(open(table).read())))
    assert [(r["optimizer.lr"], r["n"]) for r in rows] == [("0.03", "3"), ("0.1", "3")]
    assert "trainer.seed" not in rows[0]  # a configuration per row, not a run
    assert float(rows[0]["train/loss"]) == pytest.approx(1.1)
    assert float(rows[0]["train/loss_std"]) == pytest.approx(0.1)
    assert float(rows[1]["train/loss"]) == pytest.approx(6.6 / 3)
    assert parent.data.metrics["best/train_loss"] == pytest.approx(1.1)  # the best mean
    assert parent.data.metrics["best/replicates"] == 3
    assert parent.data.metrics["best/train_loss_std"] == pytest.approx(0.1)
    best_run = client.get_run(parent.data.tags["linreg.best_run_id"])
    assert best_run.data.params["optimizer.lr"] == "0.03"  # not the lucky 0.5 of lr 0.1
    assert best_run.data.metrics["train/loss"] == 1.0  # the best configuration's best run
    assert parent.data.tags["linreg.best_config"] == "optimizer.lr=0.03"
    assert "± 1.0e-01 (3)" in capsys.readouterr().out
    assert "± 1.0e-01 (3)" in parent.data.tags["mlflow.note.content"]
    shown = store.report("--run", parent.info.run_id).stdout
    assert "1.1000e+00 ± 1.0e-01 (3)" in shown
    every = list(csv.DictReader(io.StringIO(store.report("--run", parent.info.run_id,
                                                         "--csv").stdout)))  # fmt: skip
    assert len(every) == 6  # each run stays available


def test_a_sweep_where_one_job_ran_still_shows_what_it_swept(store):
    client = store.client
    experiment = client.create_experiment("one")
    parent = client.create_run(experiment, run_name="cut", tags={"linreg.sweep": "true"})
    client.log_param(parent.info.run_id, "sweep.override.0", "optimizer.lr=0.01,0.1")
    client.log_param(parent.info.run_id, "sweep.override.1", "trainer.epochs=2")
    run = client.create_run(experiment, run_name="only", tags={
        "mlflow.parentRunId": parent.info.run_id,
        "linreg.overrides": "optimizer.lr=0.01 trainer.epochs=2"})  # fmt: skip
    client.log_param(run.info.run_id, "optimizer.lr", "0.01")
    client.log_param(run.info.run_id, "trainer.epochs", "2")
    client.log_metric(run.info.run_id, "train/loss", 1.0, step=1)
    client.set_terminated(run.info.run_id, "KILLED")
    compare(client, client.get_run(parent.info.run_id), log=True, plots=False)
    table = client.download_artifacts(parent.info.run_id, "comparison.csv")
    (row,) = list(csv.DictReader(io.StringIO(open(table).read())))
    assert row["optimizer.lr"] == "0.01" and "trainer.epochs" not in row
