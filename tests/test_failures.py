"""Bad input, interruptions and killed processes: one clear line, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, Store, _env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

BAD_INPUT = [
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
    (["trainer.batch_size=0"], "trainer.batch_size=0"),
    (["trainer.epochs=1.5"], "trainer.epochs"),
    (["dataset.num_samples=-5"], "dataset.num_samples=-5"),
    (["dataset.noise_std=-1"], "dataset.noise_std=-1"),
    (["dataset.true_w=[]"], "dataset.true_w"),
    (["dataset.true_w=[1,inf]"], "dataset.true_w"),
    (["trainer.device=gpu"], "trainer.device"),
    (["trainer.engine=fast"], "trainer.engine"),
    (["optimizer.lrr=0.1"], "optimizer.lrr"),
    (["+optimizer.lrr=0.1"], "torch.optim.SGD takes no argument 'lrr'"),  # past the schema
    (["+optimizer.momentum2=???"], "optimizer.momentum2=??? is not allowed"),
    (["optimizer.lr=${nope}"], "optimizer.lr: Interpolation key 'nope' not found"),
    (["tracking.run_name=${nosuch.key}"], "tracking.run_name: Interpolation key 'nosuch.key'"),
    (["-m", "optimizer.momentum=0,0.9", "optimizer.nesterov=true"],
     "in the sweep's job optimizer.momentum=0"),
    (["optimizer=adamw"], "optimizer/adamw"),
    (["model.module._target_=os.system"], "only torch.nn"),
    (["optimizer=adam", "trainer.engine=analytic"], "trainer.engine=analytic"),
    (["tracking.uri=sqlite:////proc/forbidden/mlflow.db"], "tracking.uri=sqlite:////proc"),
    (["-m", "optimizer.lr=0.1,-1"], "optimizer.lr=-1"),
    (["-m", "optimizer.lr=0.1,abc"], "optimizer.lr=abc"),
    (["-m", "optimizer.momentum=0.9", "optimizer.dampening=0,0.5", "optimizer.nesterov=false,true"],
     "optimizer.nesterov=True is not allowed"),  # one job of the grid
    (["-m", "trainer.engine=analytic", "optimizer=adam,sgd"], "trainer.engine=analytic"),
    (["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "trainer.seed=1,2"],
     "hydra.launcher.n_jobs=0"),
    (["dataset=diabetes", "dataset.split.seed=abc"], "dataset.split.seed=abc"),
    *([(["-m", "hydra/launcher=slurm", "trainer.seed=1,2"], "sbatch is not on PATH")]
      if shutil.which("sbatch") is None else []),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, template_store):
    """Every BAD_INPUT command line, run by linreg-train's own app in one process against one
    store (tests/commands.py); the store afterwards."""
    root = tmp_path_factory.mktemp("bad-input")
    shutil.copy(template_store, root / "mlflow.db")
    store = Store(root)
    result = subprocess.run(
        [sys.executable, "-m", "tests.commands"], cwd=ROOT, env=_env(store.uri),
        input=json.dumps([args for args, _ in BAD_INPUT]), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(map(tuple, (a for a, _ in BAD_INPUT)), json.loads(result.stdout))), store


# One worker takes them all (an xdist group): the module fixture runs the command lines once,
# not once per worker that gets one of them (~13 s of CPU each time).
@pytest.mark.xdist_group("bad-input")
@pytest.mark.parametrize(
    "args,named", BAD_INPUT, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_bad_input_is_one_line_and_creates_nothing(bad_input_results, args, named):
    results, store = bad_input_results
    code, out, err = results[tuple(args)]
    _assert_refused(code, out, err, named)
    assert store.all_runs() == []  # no command line of them made a run


# Through the real program too: one of each kind (Hydra's composition, a setting, a sweep's
# job), for the command's own exit path (linreg_lab.cli.train.main, its MLflow helper).
@pytest.mark.parametrize(
    "args,named",
    [(["optimizer=adamw"], "optimizer/adamw"), (["trainer.batch_size=0"], "trainer.batch_size=0"),
     (["-m", "optimizer.lr=0.1,-1"], "optimizer.lr=-1")],
)  # fmt: skip
def test_bad_input_through_the_command(store, args, named):
    result = store.train(*args, check=False)
    _assert_refused(result.returncode, result.stdout, result.stderr, named)
    assert store.all_runs() == []


def _assert_refused(code: int, out: str, err: str, named: str) -> None:
    assert "Traceback" not in err + out
    message = [line for line in err.splitlines() if line.strip()]
    if named in HYDRAS_OWN:  # Hydra's composition errors: its own text, exit 1 (README)
        assert code == 1 and any(named in line for line in message), err
    else:  # ours: one line naming the setting, exit 2
        assert code == 2, (code, err)
        assert len(message) == 1 and named in message[0], err


HYDRAS_OWN = {"optimizer.lrr", "optimizer/adamw"}


def test_store_from_another_mlflow_version(store):
    with sqlite3.connect(store.root / "mlflow.db") as db:
        db.execute("update alembic_version set version_num = 'ffffffffffff'")
    result = store.train(check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "another MLflow version" in result.stderr and len(result.stderr.splitlines()) == 1


def test_dead_server_is_one_line_naming_the_uri(store):
    # How fast (MLflow's own retries would take minutes): make bench, item 9 (limits).
    result = store.train("tracking=server", "tracking.uri=http://127.0.0.1:9", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert "tracking.uri=http://127.0.0.1:9" in line and "no MLflow server answers" in line


def start_in_group(store, *args: str) -> subprocess.Popen:
    """Start linreg-train in its own process group, as a terminal's foreground job."""
    return subprocess.Popen(
        [str(BIN / "linreg-train"), *args],
        cwd=store.root,
        env=_env(store.uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_metric(store, experiment: str, count: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment_ = store.client.get_experiment_by_name(experiment)
        if experiment_:
            runs = store.client.search_runs([experiment_.experiment_id], "metrics.`train/loss` > 0")
            if len(runs) >= count:
                return
        time.sleep(0.5)
    raise AssertionError("no run logged an epoch in time")


def interrupt(store, *args: str, signum=signal.SIGINT, code=130, experiment="linreg",
              count: int = 1, timeout: float = 30, before=lambda process: None):  # fmt: skip
    """Start linreg-train args in its own process group, wait for count runs of experiment to
    have logged an epoch (the store's earlier runs included), send the group signum (Ctrl-C
    by default) and check the exit code; returns before(process), read just before the
    signal (the ranks a job started, say)."""
    process = start_in_group(store, *args)
    try:
        wait_for_metric(store, experiment, count=count)
        seen = before(process)
        os.killpg(process.pid, signum)
        assert process.wait(timeout=timeout) == code
    finally:
        process.kill()
    return seen


LONG_RUN = ["dataset.num_samples=20000", "trainer.epochs=100000", "trainer.engine=autograd"]


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_ends_the_run_killed_keeping_its_metrics(store, signum, code):
    interrupt(store, *LONG_RUN, signum=signum, code=code)
    (run,) = store.runs()
    assert run.info.status == "KILLED"
    assert signal.Signals(signum).name in run.data.tags["linreg.failure"]
    assert len(store.client.get_metric_history(run.info.run_id, "train/loss")) >= 1
    store.command("trainer.epochs=1")  # the store still works
    assert {r.info.status for r in store.runs()} == {"KILLED", "FINISHED"}


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


@pytest.mark.parametrize(
    "launcher,signum,to_group",
    [
        ([], signal.SIGINT, True),
        (JOBLIB, signal.SIGINT, True),
        (JOBLIB, signal.SIGTERM, False),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"], signal.SIGINT, True),
    ],
    ids=["basic", "joblib", "joblib-sigterm-to-the-sweep-process", "joblib-jobs-in-its-process"],
)
def test_interrupted_sweep_stops_and_ends_killed(store, launcher, signum, to_group):
    import csv

    import psutil

    # lrs, not seeds: a sweep over seeds alone compares one configuration (replicates)
    lrs = "optimizer.lr=" + ",".join(f"{0.01 + 0.001 * i:.3f}" for i in range(6))
    process = start_in_group(store, "-m", *LONG_RUN, lrs, *launcher)
    try:
        wait_for_metric(store, "linreg")
        processes = psutil.Process(process.pid).children(recursive=True)
        if to_group:  # Ctrl-C in a terminal
            os.killpg(process.pid, signum)
        else:  # `kill <pid>`: the workers hear of it from the sweep's process only
            os.kill(process.pid, signum)
        assert process.wait(timeout=60) == 128 + signum
    finally:
        process.kill()
    assert "Traceback" not in process.stderr.read()
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []  # workers and MLflow helpers end with the sweep
    runs = store.runs()
    parent = next(r for r in runs if r.data.tags.get("linreg.sweep") == "true")
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "KILLED"
    assert 1 <= len(children) <= 2  # no job started after the interrupt
    assert {c.info.status for c in children} == {"KILLED"}
    # The sweep's comparison says what the store says.
    table = store.client.download_artifacts(parent.info.run_id, "comparison.csv", str(store.root))
    with open(table) as rows:
        compared = {row["run_id"]: row["status"] for row in csv.DictReader(rows)}
    assert compared == {c.info.run_id: c.info.status for c in children}


def _catches(pid: int, signum: int) -> bool:
    """Whether process pid has a handler installed for signum (/proc/PID/status SigCgt)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (signum - 1) & 1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_exits_before_any_run(store, signum):
    """README: during start-up the command exits as it does in training, before any run."""
    process = start_in_group(store)
    try:
        deadline = time.monotonic() + 60
        while not _catches(process.pid, signal.SIGTERM):  # linreg-train's handlers are in
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(process.pid, signum)  # while it imports torch and Hydra
        code = process.wait(timeout=60)
        err = process.stderr.read()
    finally:
        process.kill()
    assert code == 128 + signum and "Traceback" not in err, (code, err[-2000:])
    assert store.all_runs() == []


def test_sigkill_leaves_a_run_the_next_start_marks_failed(store):
    process = start_in_group(store, *LONG_RUN)
    try:
        wait_for_metric(store, "linreg")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    (orphan,) = store.runs()
    assert orphan.info.status == "RUNNING"
    store.command("trainer.epochs=1")
    statuses = {r.info.run_id: r for r in store.runs()}
    marked = statuses[orphan.info.run_id]
    assert marked.info.status == "FAILED"
    assert f"process {process.pid}" in marked.data.tags["linreg.failure"]
    assert sum(r.info.status == "FINISHED" for r in statuses.values()) == 1


def test_sigkill_of_the_training_process_alone_the_helper_ends_its_run(store):
    process = start_in_group(store, *LONG_RUN)
    try:
        wait_for_metric(store, "linreg")
        os.kill(process.pid, signal.SIGKILL)  # not the group: its MLflow helper lives on
        process.wait(timeout=30)
    finally:
        process.kill()
    deadline = time.monotonic() + 60
    while (run := store.runs()[0]).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.info.status == "FAILED"
    assert f"process {process.pid} ended without closing" in run.data.tags["linreg.failure"]
    assert len(store.client.get_metric_history(run.info.run_id, "train/loss")) >= 1


def test_the_training_process_never_imports_mlflow(store):
    """MLflow (~4 s to import and open) lives in the helper; the run is whole at exit."""
    code = "import sys; sys.argv = ['linreg-train']; from linreg_lab.cli.train import main; main()"
    result = subprocess.run(  # -X importtime: every module this process imports, on stderr
        [sys.executable, "-X", "importtime", "-c", code], cwd=store.root, env=_env(store.uri),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "torch" in imported and "hydra" in imported  # the training process's own
    assert not [name for name in imported if name.split(".")[0] == "mlflow"]
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] < 2e-4
    artifacts = {a.path for a in store.client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/loss.png", "plots/parameters.png"}
