"""linreg-train as a user runs it, read back through the MLflow client.

What the command itself does (its output, exit codes, --help) runs the real command; what a
run records runs in this process through the same run_experiment (Store.train_here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def metric_values(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
@pytest.mark.check
def test_default_experiment_end_to_end(store):
    result = store.train()
    (run,) = store.runs()
    assert run.info.status == "FINISHED"
    assert run.info.run_id in result.stdout and "recovered" in result.stdout
    assert "linreg-ui" in result.stdout

    client = store.client
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == [1, 2, 3]
    final = run.data.metrics
    assert abs(final["train/loss"] - 1e-4) < 0.3e-4
    assert final["error/w_l2"] < 0.01 and final["error/b_abs"] < 0.01
    assert 0 <= final["error/excess_loss"] < 1e-5
    for key in ["train/last_batch_loss", "param/w_0", "param/w_2", "param/b", "error/b_abs"]:
        assert len(client.get_metric_history(run.info.run_id, key)) == 3, key

    params = run.data.params
    assert params["optimizer.lr"] == "0.03" and params["trainer.batch_size"] == "10"
    assert (
        params["dataset.num_samples"] == "1000"
        and params["optimizer._target_"] == "torch.optim.SGD"
    )
    assert run.info.run_name == "default"
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    folder = Path(run.data.tags["linreg.output_dir"])  # the run points at its Hydra folder
    assert folder.is_absolute() and (folder / ".hydra" / "config.yaml").exists()
    log = (folder / "train.log").read_text()  # the job's log holds what the console showed
    for line in [x for x in result.stdout.splitlines() if x.strip()][-4:]:
        assert line.strip() in log, (line, log)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.txt", "parameters.json"} <= artifacts
    report = json.loads(open(client.download_artifacts(run.info.run_id, "parameters.json")).read())
    assert report["true"]["w"] == pytest.approx([2.8, -1.7, 3.6])
    assert report["recovered"]["b"] == pytest.approx(final["param/b"])


def test_overrides_reach_the_run_and_name_it(store):
    store.train_here("optimizer.lr=0.1", "trainer.batch_size=32", "trainer.epochs=5")
    (run,) = store.runs()
    assert (
        run.data.params["optimizer.lr"] == "0.1" and run.data.params["trainer.batch_size"] == "32"
    )
    assert len(store.client.get_metric_history(run.info.run_id, "train/loss")) == 5
    assert run.info.run_name == "lr=0.1 batch_size=32 epochs=5"
    assert run.data.params["model.module.in_features"] == "3"  # from the data, not ???


def test_adam_and_larger_dataset(store):
    store.train_here("optimizer=adam", "dataset.num_samples=5000", "tracking.experiment_name=adam")
    (run,) = store.runs("adam")
    assert run.info.status == "FINISHED" and run.data.tags["linreg.engine"] == "autograd"
    assert run.data.params["optimizer._target_"] == "torch.optim.Adam"
    assert run.data.metrics["error/w_l2"] < 0.01


def test_seeds_decide_the_trajectory(store):
    store.train_here("trainer.seed=7", "tracking.run_name=a")
    store.train_here("trainer.seed=7", "tracking.run_name=b")
    store.train_here("trainer.seed=8", "tracking.run_name=c")
    runs = {r.info.run_name: r.info.run_id for r in store.runs()}
    curves = {name: metric_values(store.client, rid, "train/loss") for name, rid in runs.items()}
    assert curves["a"] == curves["b"]
    assert curves["a"] != curves["c"]


def test_large_random_problem(store):
    store.train_here("dataset.num_features=50", "dataset.num_samples=20000",
                     "trainer.batch_size=100")  # fmt: skip
    (run,) = store.runs()
    assert "param/w_0" not in run.data.metrics  # only small D logs each weight
    assert run.data.metrics["error/w_l2"] < 0.01


@pytest.mark.slow
def test_a_diverged_run_says_why_and_exits_1(store):
    result = store.command("optimizer.lr=50", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "FAILED: diverged at epoch 1" in result.stdout
    (run,) = store.runs()
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["linreg.failure"]


@pytest.mark.slow
def test_help_is_this_tools_page_and_cfg_prints_the_config(store):
    page = store.train("--help").stdout
    assert page.startswith("linreg-train: linear regression in PyTorch")
    for text in ("dataset: diabetes, synthetic, table", "optimizer: adam, sgd", "trainer: default",
                 "experiment:", "hydra/launcher=joblib", "linreg-train -m optimizer.lr=",
                 "mlruns/mlflow.db", "lr: 0.03", "--hydra-help"):  # fmt: skip
        assert text in page, text
    assert "schema" not in page
    assert "Hydra" in store.train("--hydra-help").stdout  # Hydra's own stays
    job = store.train("--cfg", "job").stdout
    assert "lr: 0.03" in job and "batch_size: 10" in job and "mlflow.db" in job
    assert store.all_runs() == []


def test_the_library_runs_twice_in_one_process_without_the_command(store):
    """Compose with Hydra's API, run, run again with other overrides: the resolver is the
    library's, no signal handler is installed, nothing of the first run leaks into the second."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    first = store.train_here("trainer.epochs=1", "tracking.run_name=first")
    second = store.train_here("trainer.epochs=2", "optimizer.lr=0.1", "tracking.run_name=second")
    assert {s: signal.getsignal(s) for s in before} == before
    runs = {r.info.run_name: r for r in store.runs()}
    assert runs["first"].info.run_id == first.run_id and runs["second"].info.run_id == second.run_id
    assert len(store.client.get_metric_history(second.run_id, "train/loss")) == 2
    assert runs["second"].data.params["optimizer.lr"] == "0.1"
