"""Multirun sweeps through Hydra's real launchers, into a temporary store."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
GRID = ["optimizer.lr=0.01,0.03,0.1", "trainer.batch_size=10,32", "trainer.epochs=2"]


def sweep_runs(store, experiment: str = "linreg"):
    runs = store.runs(experiment)
    parents = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every run of the experiment belongs to the sweep"
    return parent, children


def assert_complete_grid(store, parent, children, size: int, epochs: int = 2):
    assert parent.info.status == "FINISHED"
    assert len(children) == size and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        history = store.client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
    artifacts = {a.path for a in store.client.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "heatmap.png", "losses.png"} <= artifacts, artifacts
    table = list(csv.DictReader(io.StringIO(
        open(store.client.download_artifacts(parent.info.run_id, "comparison.csv")).read()
    )))  # fmt: skip
    losses = [float(row["train/loss"]) for row in table]
    assert losses == sorted(losses) and len(table) == size
    best = min(children, key=lambda c: c.data.metrics["train/loss"])
    assert parent.data.tags["linreg.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/train_loss"] == pytest.approx(best.data.metrics["train/loss"])


def test_grid_sweep_on_a_fresh_store(fresh_store):
    result = fresh_store.command("-m", *GRID)
    parent, children = sweep_runs(fresh_store)
    assert_complete_grid(fresh_store, parent, children, size=6)
    assert parent.info.run_id in result.stdout and "best first" in result.stdout
    assert {c.data.params["optimizer.lr"] for c in children} == {"0.01", "0.03", "0.1"}
    assert {c.info.experiment_id for c in children} == {parent.info.experiment_id}


def test_a_sweep_through_submitit_local(store):
    """Each job a process of its own (submitit): 2 jobs are enough to show it."""
    result = store.train(
        "-m",
        "optimizer.lr=0.01,0.1",
        "trainer.epochs=2",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
    )
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["linreg.pid"] for c in children}) == 2  # a process each
    for child in children:
        history = store.client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in store.client.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "loss_vs_optimizer_lr.png", "losses.png"} <= artifacts
    assert parent.info.run_id in " ".join(result.stdout.split())


def test_named_preset_uses_its_grid_and_experiment(store):
    """The preset's grid and experiment (joblib workers on a new store: test_server.py)."""
    result = store.command("-m", "experiment=lr_batch_grid", "trainer.epochs=1")
    parent, children = sweep_runs(store, "lr_batch_grid")
    assert_complete_grid(store, parent, children, size=12, epochs=1)
    assert "lr_batch_grid" in parent.info.run_name
    shown = " ".join(result.stdout.split())  # the table's title may wrap
    assert parent.info.run_id in shown and "best first" in shown
    assert {c.info.experiment_id for c in children} == {parent.info.experiment_id}


def test_a_diverging_job_fails_alone(store):
    result = store.command("-m", "optimizer.lr=0.03,50", "trainer.epochs=2")
    parent, children = sweep_runs(store)
    by_lr = {c.data.params["optimizer.lr"]: c for c in children}
    assert by_lr["0.03"].info.status == "FINISHED"
    failed = by_lr["50.0"] if "50.0" in by_lr else by_lr["50"]
    assert failed.info.status == "FAILED"
    assert "diverged" in failed.data.tags["linreg.failure"]
    assert parent.info.status == "FAILED"
    assert "1 of 2 runs did not finish" in result.stdout
    assert "diverged" in result.stdout
    assert "loss_vs_optimizer_lr.png" in {
        a.path for a in store.client.list_artifacts(parent.info.run_id)
    }


@pytest.mark.check
def test_report_reads_a_past_sweep(store):
    """A real 2-job sweep (make check runs it too): its parent, its comparison, linreg-report."""
    result = store.train("-m", "optimizer.lr=0.01,0.03", "trainer.epochs=1")
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED" and {c.info.status for c in children} == {"FINISHED"}
    shown = " ".join(result.stdout.split())  # the table's title may wrap
    assert parent.info.run_id in shown and "best first" in shown
    sweep_dir = Path(parent.data.tags["linreg.sweep_dir"])
    assert sweep_dir.is_absolute() and (sweep_dir / "multirun.yaml").exists()
    for child in children:  # each job's log holds its console line, the run's id in it
        log = (Path(child.data.tags["linreg.output_dir"]) / "train.log").read_text()
        assert "FINISHED train/loss" in log and child.info.run_id in log, log
    best = min(children, key=lambda c: c.data.metrics["train/loss"])
    assert parent.data.tags["linreg.best_run_id"] == best.info.run_id
    assert parent.data.tags["linreg.best_run"] == best.info.run_name
    assert parent.data.metrics["best/train_loss"] == best.data.metrics["train/loss"]
    assert parent.data.metrics["best/error_w_l2"] == best.data.metrics["error/w_l2"]
    compared = list(csv.DictReader(io.StringIO(open(store.client.download_artifacts(
        parent.info.run_id, "comparison.csv", str(store.root))).read())))  # fmt: skip
    assert [row["optimizer.lr"] for row in compared] == ["0.03", "0.01"]  # best first
    assert best.data.params["optimizer.lr"] == "0.03"
    latest = store.report("--csv").stdout
    by_id = store.report("--run", parent.info.run_id, "--csv").stdout
    assert latest == by_id
    rows = list(csv.DictReader(io.StringIO(latest)))
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    assert {r["optimizer.lr"] for r in rows} == {"0.01", "0.03"}
    # Every param and every metric of every job, read back against MLflow's own values.
    for row in rows:
        child = next(c for c in children if c.info.run_id == row["run_id"])
        assert set(child.data.params) | set(child.data.metrics) <= set(row)
        assert float(row["train/loss"]) == child.data.metrics["train/loss"]
        assert row["optimizer.lr"] == child.data.params["optimizer.lr"]
        assert row["stability.lr_critical"] == child.data.params["stability.lr_critical"]
    table = store.report("--experiment", "linreg").stdout
    assert all(c.info.run_id in table for c in children)
    for args, says in [
        (["--experiment", "nope"], "--experiment=nope: not found"),
        (["--run", "nope"], "--run=nope: no such run"),
        (["--run", children[0].info.run_id], "not a sweep's parent run"),
    ]:
        refused = store.report(*args, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("linreg-report: error:") and says in line, line
    absent = store.root / "absent.db"
    nowhere = store.report("--uri", f"sqlite:///{absent}", check=False)
    assert nowhere.returncode == 2 and f"--uri=sqlite:///{absent}: no such store" in nowhere.stderr
    assert not absent.exists()  # reading a store never creates one
    # The command itself, once: its exit code and output as a user sees them.
    command = store.run("linreg-report", "--run", "nope", check=False)
    assert command.returncode == 2 and command.stderr.startswith("linreg-report: error: --run=")


def test_a_sweeps_settings_are_checked_together_as_each_job_has_them(store):
    # nesterov=true alone (momentum 0 by default) is refused; with each swept momentum it is fine
    store.command("-m", "optimizer.momentum=0.5,0.9", "optimizer.nesterov=true", "trainer.epochs=1")
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {c.data.params["optimizer.nesterov"] for c in children} == {"True"}
    # ...and a sweep with one impossible job is refused whole, before any run exists
    result = store.command(
        "-m", "optimizer.momentum=0,0.9", "optimizer.nesterov=false,true", check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "optimizer.nesterov=True is not allowed" in result.stderr
    assert "optimizer.momentum=0 optimizer.nesterov=True" in result.stderr  # the job named
    assert len(store.runs()) == 3


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_repeated_job_runs_twice_each_with_its_own_run(store, launcher):
    store.command("-m", "trainer.seed=1,1", "trainer.epochs=1", f"hydra/launcher={launcher}")
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED"
    assert len({c.info.run_id for c in children}) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert len(list(store.root.glob("multirun/*/*/[01]/.hydra/config.yaml"))) == 2


def test_optuna_preset_searches_and_reports(store):
    pytest.importorskip("optuna", reason="pip install -e .[optuna]")
    result = store.command("-m", "experiment=lr_batch_optuna", "hydra.sweeper.n_trials=3")
    parent, children = sweep_runs(store, "lr_batch_optuna")
    assert len(children) == 3 and parent.info.status == "FINISHED"
    assert "Best value" in result.stdout + result.stderr
    best = min(children, key=lambda c: c.data.metrics["train/loss"])
    assert parent.data.tags["linreg.best_run_id"] == best.info.run_id
    # The parent is the study: its settings, counts, best trial and Optuna's plots.
    assert parent.data.params["optuna.study_name"].startswith("lr_batch_optuna-")
    assert parent.data.params["optuna.sampler"] == "TPESampler(seed=0)"
    assert parent.data.metrics["optuna.trials.complete"] == 3
    assert parent.data.metrics["optuna.best_value"] == best.data.metrics["train/loss"]
    assert parent.data.tags["optuna.best_trial"] == best.data.tags["linreg.trial"]
    assert {c.data.tags["linreg.trial"] for c in children} == {"0", "1", "2"}
    plots = {a.path for a in store.client.list_artifacts(parent.info.run_id, "optuna")}
    assert "optuna/optimization_history.png" in plots
    assert (store.root / "optuna.db").exists()  # beside the store (mlflow.db)


def test_jobs_on_the_same_data_reuse_it_with_the_same_results(store):
    """The next job with an equal dataset config takes the last job's data and optimum."""
    store.command("-m", "dataset.seed=0,1", "optimizer.lr=0.01,0.03", "trainer.epochs=1")
    parent, children = sweep_runs(store)
    logs = sorted(store.root.glob("multirun/*/*/[0-3]/train.log"))
    reused = ["reused" in log.read_text() for log in logs]
    assert reused == [False, True, False, True]  # jobs ordered seed 0, 0, 1, 1
    by_job = {(c.data.params["dataset.seed"], c.data.params["optimizer.lr"]): c for c in children}
    optimum = {key: c.data.metrics["optimum/loss"] for key, c in by_job.items()}
    assert optimum[("0", "0.01")] == optimum[("0", "0.03")] != optimum[("1", "0.01")]
    assert optimum[("1", "0.01")] == optimum[("1", "0.03")]
    # a job on reused data ends where the same job alone ends
    store.command("dataset.seed=1", "optimizer.lr=0.03", "trainer.epochs=1")
    alone = [r for r in store.runs() if not r.data.tags.get("mlflow.parentRunId")
             and r.data.tags.get("linreg.sweep") != "true"]  # fmt: skip
    assert len(alone) == 1
    for metric in ("train/loss", "error/w_l2", "optimum/loss"):
        assert alone[0].data.metrics[metric] == by_job[("1", "0.03")].data.metrics[metric]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=vectorized"]],
                         ids=["basic", "joblib", "vectorized"])  # fmt: skip
def test_a_rerun_sweep_trains_only_what_did_not_finish(store, launcher):
    """A sweep re-run (here with one value more): only the jobs that did not finish before
    train (FINISHED ones are skipped; FAILED and KILLED ones train again); the comparison
    lists every job once."""
    # joblib's workers are processes of their own: the real command; the others in-process
    train = store.train if "hydra/launcher=joblib" in launcher else store.command
    first = train("-m", "optimizer.lr=0.01,0.03,50", "trainer.epochs=2", *launcher)
    assert "skipped" not in first.stdout
    by_lr = {r.data.params["optimizer.lr"]: r for r in store.runs()
             if "mlflow.parentRunId" in r.data.tags}  # fmt: skip
    assert by_lr["50.0" if "50.0" in by_lr else "50"].info.status == "FAILED"  # diverged
    # A job stopped by Ctrl-C ends KILLED (tests/test_failures.py); here the store says so.
    store.client.set_terminated(by_lr["0.03"].info.run_id, "KILLED")
    again = train("-m", "optimizer.lr=0.01,0.03,50,0.1", "trainer.epochs=2", *launcher,
                        check=False)  # fmt: skip
    assert again.stdout.count("FINISHED before, in run") == 1, again.stdout
    assert f"FINISHED before, in run {by_lr['0.01'].info.run_id}" in again.stdout
    runs = store.runs()
    parents = sorted((r for r in runs if r.data.tags.get("linreg.sweep") == "true"),
                     key=lambda r: r.info.start_time)  # fmt: skip
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 6  # 3 + 3 trained (0.03, 50, 0.1), not 3 + 4
    second = parents[1]
    from linreg_lab.tracking.report import children as sweep_runs

    listed = sweep_runs(store.client, store.client.get_run(second.info.run_id))
    lrs = sorted(r.data.params["optimizer.lr"] for r in listed)
    assert len(lrs) == 4 and lrs[:3] == ["0.01", "0.03", "0.1"] and lrs[3] in ("50", "50.0")
    retrained = {r.data.params["optimizer.lr"]: r for r in listed}
    assert retrained["0.03"].info.status == "FINISHED"  # KILLED before: trained again
    assert retrained["0.01"].info.run_id == by_lr["0.01"].info.run_id  # the first sweep's
    comparison = store.client.download_artifacts(second.info.run_id, "comparison.csv",
                                                 str(store.root))  # fmt: skip
    assert open(comparison).read().count("\n") == 5  # a header and each job once
    note = second.data.tags["mlflow.note.content"]  # the parent's description in the UI
    assert all(f"| {lr} |" in note for lr in ("0.01", "0.03", "0.1")), note
    if "hydra/launcher=joblib" in launcher:
        return  # joblib's jobs skip through linreg-train's code, as the basic launcher's do
    forced = train("-m", "optimizer.lr=0.01", "trainer.epochs=2",
                         "sweep.rerun_finished=true", *launcher)  # fmt: skip
    assert "skipped" not in forced.stdout
    assert len([r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]) == 7


@pytest.mark.slow
def test_any_two_swept_keys_get_a_heatmap(store):
    store.command("-m", "optimizer.lr=0.03,1.2", "trainer.epochs=1,2", "tracking.log_plots=false")
    parent, _ = sweep_runs(store)
    assert "heatmap.png" in {a.path for a in store.client.list_artifacts(parent.info.run_id)}


def test_a_sweeps_loss_curves_are_one_picture_on_its_parent_unless_each_job_is_asked(store):
    store.command("-m", "optimizer.lr=0.01,0.1", "trainer.epochs=2")
    parent, children = sweep_runs(store)
    assert "losses.png" in {a.path for a in store.client.list_artifacts(parent.info.run_id)}
    png = store.client.download_artifacts(parent.info.run_id, "losses.png", str(store.root))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    for child in children:  # what each would repeat of MLflow's charts is not drawn per job
        assert not store.client.list_artifacts(child.info.run_id, "plots")
        assert len(store.client.get_metric_history(child.info.run_id, "train/loss")) == 2
    store.command("-m", "optimizer.lr=0.02,0.2", "trainer.epochs=2", "tracking.plots_per_job=true")
    runs = [r for r in store.runs() if r.data.params.get("optimizer.lr") in ("0.02", "0.2")]
    assert len(runs) == 2
    for run in runs:
        plots = {a.path for a in store.client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {"plots/loss.png", "plots/parameters.png"}


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_job_returns_its_configurations_mean_over_replicates(store, launcher):
    """What a sweeper is given (Optuna's objective) ranks configurations as the comparison
    does: each job returns the mean of its configuration's runs so far, seeds aside."""
    import json
    import statistics

    returns = store.root / "returns.jsonl"
    store.command("-m", "trainer.seed=1,2", "optimizer.lr=0.01,0.03", "trainer.epochs=1",
                f"hydra/launcher={launcher}", "+hydra.callbacks.returns._target_="
                "tests.returns.RecordReturns", f"+hydra.callbacks.returns.path={returns}",
                PYTHONPATH=str(Path(__file__).resolve().parent.parent))  # fmt: skip
    _, children = sweep_runs(store)
    loss = {(c.data.params["trainer.seed"], c.data.params["optimizer.lr"]):
            c.data.metrics["train/loss"] for c in children}  # fmt: skip
    assert len(set(loss.values())) == 4  # each seed its own result
    got = {}
    for overrides, value in map(json.loads, returns.read_text().splitlines()):
        job = dict(o.split("=", 1) for o in overrides if not o.startswith(("hydra", "+hydra")))
        got[job["trainer.seed"], job["optimizer.lr"]] = value
    assert len(got) == 4
    for lr in ("0.01", "0.03"):  # jobs run seed 1 first: alone, then the mean of both
        assert got["1", lr] == pytest.approx(loss["1", lr], rel=1e-12)
        assert got["2", lr] == pytest.approx(statistics.fmean([loss["1", lr], loss["2", lr]]))
