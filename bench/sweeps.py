"""Item 7: `linreg-train -m` against the sweep a user writes by hand from Hydra's and MLflow's docs.

The peer is bench/peer_sweep/peer.py: @hydra.main, Hydra's basic launcher, the tutorial's
DataLoader loop, one mlflow.start_run() per job logging the config, train/loss and the parameters
per epoch. Ours is .venv/bin/linreg-train -m optimizer.lr=... with the basic, vectorized and
joblib (2 workers) launchers, with and without its per-run plots (tracking.log_plots).

Every command runs in a fresh subprocess on a fresh copy of one initialised sqlite store
(end_to_end.Stores, so the schema creation is not timed), and each store is checked afterwards:
the peer's holds one run per job, ours one run per job plus the sweep's parent run.

Each measurement runs once (a 256-job sweep with plots takes minutes): the order alternates per
size (peer first, then ours first) to spread the machine's load over both. The per-job overhead is
the slope of wall time over jobs between 64 and 256 jobs, which leaves out each command's fixed
start-up (imports, Hydra, the store).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.end_to_end import BIN, ROOT, Stores, learning_rates, timed

PEER = ROOT / "bench" / "peer_sweep" / "peer.py"
NOOP = ROOT / "bench" / "peer_sweep" / "noop.py"
# The floors: what Hydra alone costs (linreg-train's config, a task that does nothing), and
# what MLflow alone costs (one of our job's runs written again through MlflowClient).
FLOORS = ("hydra", "mlflow")
VARIANTS = {  # name: linreg-train overrides beyond -m optimizer.lr=...
    "basic": [],
    "basic_noplots": ["tracking.log_plots=false"],
    "vectorized": ["hydra/launcher=vectorized"],
    "vectorized_noplots": ["hydra/launcher=vectorized", "tracking.log_plots=false"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}
SLOPE_SIZES = (64, 256)


def measure(sizes: list[int], joblib_sizes: list[int] | None = None,
            only: list[str] | None = None) -> list[dict]:  # fmt: skip
    """One row per size: seconds of the peer and of each variant of ours, and peer_s / ours_s.

    joblib_sizes: the sizes the joblib variant runs at (None: every size); only: the variants
    to run (None: all; the others' figures are None). Every row also holds
    slope_ms, {"peer" or variant: ms per job from 64 to 256 jobs}, None where either is missing.
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as tmp:
        workdir = Path(tmp)
        stores = Stores(workdir)
        for index, size in enumerate(sizes):
            lrs = learning_rates(size)
            if len(set(lrs)) != size:
                raise ValueError(f"{size} learning rates are not distinct: {lrs}")
            values = "lr=" + ",".join(str(lr) for lr in lrs)
            variants = [
                name for name in VARIANTS
                if (name != "joblib" or joblib_sizes is None or size in joblib_sizes)
                and (only is None or name in only)
            ]  # fmt: skip
            order = ["peer", *variants] if index % 2 == 0 else [*variants, "peer"]
            seconds, cpu = {}, {}
            for name in order:
                print(f"    {size} jobs: {name}", file=sys.stderr, flush=True)
                folder = stores.fresh()
                sweep_dir = f"hydra.sweep.dir={folder / 'multirun'}"
                if name == "peer":
                    command = [sys.executable, str(PEER), "-m", values, sweep_dir]
                else:
                    overrides = ["-m", f"optimizer.{values}", *VARIANTS[name], sweep_dir]
                    command = [str(BIN / "linreg-train"), *overrides]
                uri = f"sqlite:///{folder / 'mlflow.db'}"
                before = _children_cpu()
                seconds[name] = timed(command, folder, MLFLOW_TRACKING_URI=uri)
                cpu[name] = _children_cpu() - before
                _check_runs(uri, size if name == "peer" else size + 1, f"{name}, {size} jobs")
                if name == "basic":
                    ours = uri
            print(f"    {size} jobs: floors", file=sys.stderr, flush=True)
            folder = stores.fresh()
            seconds["hydra"] = timed(
                [sys.executable, str(NOOP), "-m", f"optimizer.{values}",
                 f"hydra.sweep.dir={folder / 'multirun'}", "~hydra.callbacks.mlflow_sweep",
                 "+hydra.callbacks.once._target_=noop.ComposeOnce"],
                folder,
            )  # fmt: skip
            seconds["mlflow"] = mlflow_floor(
                ours, f"sqlite:///{stores.fresh() / 'mlflow.db'}", size
            )
            peer_s = seconds["peer"]
            row = {"jobs": size, "peer_s": peer_s}
            row.update({f"{name}_s": seconds.get(name) for name in VARIANTS})
            row.update({f"{name}_cpu_s": cpu.get(name) for name in ["peer", *VARIANTS]})
            row.update({f"x_{name}": _ratio(peer_s, seconds.get(name)) for name in VARIANTS})
            row.update({f"{name}_s": seconds[name] for name in FLOORS})
            rows.append(row)
    slope_ms = slopes(rows)
    return [{**row, "slope_ms": slope_ms} for row in rows]


def _children_cpu() -> float:
    """User + system seconds of this process's finished children and what they waited for:
    a sweep's every process (its MLflow helper, joblib's workers and their helpers), as each
    is waited for by its parent."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def slopes(rows: list[dict]) -> dict[str, float | None]:
    """Per-job overhead in ms of the peer and each variant: (t256 - t64) / 192 * 1000."""
    small, big = ({r["jobs"]: r for r in rows}.get(n) for n in SLOPE_SIZES)
    out = {}
    for name in ["peer", *VARIANTS, *FLOORS]:
        key = f"{name}_s"
        if small is None or big is None or small.get(key) is None or big.get(key) is None:
            out[name] = None
        else:
            out[name] = (big[key] - small[key]) / (SLOPE_SIZES[1] - SLOPE_SIZES[0]) * 1000
    return out


def _ratio(peer_s: float, ours_s: float | None) -> float | None:
    return None if ours_s is None else peer_s / ours_s


def _check_runs(uri: str, expected: int, what: str) -> None:
    """Raises unless the store holds expected runs, all FINISHED."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=10 * expected + 10)
    unfinished = [r.info.run_id for r in runs if r.info.status != "FINISHED"]
    if len(runs) != expected or unfinished:
        raise RuntimeError(
            f"{what}: {len(runs)} runs in {uri}, expected {expected}; not FINISHED: {unfinished}"
        )


def mlflow_floor(source_uri: str, target_uri: str, jobs: int) -> float:
    """Seconds MlflowClient takes to write jobs runs, one after another, each holding what a
    child run of our sweep in source_uri holds (tags, params, every metric's history, the
    artifacts, the dataset input): the store's share of a sweep, with nothing of ours."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    source = mlflow.MlflowClient(source_uri)
    ids = [e.experiment_id for e in source.search_experiments()]
    child = next(r for r in source.search_runs(ids, max_results=50)
                 if "mlflow.parentRunId" in r.data.tags)  # fmt: skip
    run_id = child.info.run_id
    tags = {k: v for k, v in child.data.tags.items() if k != "mlflow.parentRunId"}
    params = [Param(k, v) for k, v in child.data.params.items()]
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in child.data.metrics
        for m in source.get_metric_history(run_id, key)
    ]
    datasets = child.inputs.dataset_inputs
    with tempfile.TemporaryDirectory(prefix="linreg-floor-") as tmp:
        (Path(tmp) / "from").mkdir()
        artifacts = Path(source.download_artifacts(run_id, "", str(Path(tmp) / "from")))
        target = mlflow.MlflowClient(target_uri)
        experiment = target.create_experiment("floor", (Path(tmp) / "store").as_uri())
        start = time.perf_counter()
        for _ in range(jobs):
            run = target.create_run(experiment, tags=tags, run_name=child.info.run_name)
            new_id = run.info.run_id
            target.log_batch(new_id, params=params[:100])
            for i in range(100, len(params), 100):
                target.log_batch(new_id, params=params[i : i + 100])
            for i in range(0, len(metrics), 1000):
                target.log_batch(new_id, metrics=metrics[i : i + 1000],
                                 tags=[RunTag("linreg.engine", "floor")])  # fmt: skip
            target.log_artifacts(new_id, str(artifacts))
            if datasets:
                target.log_inputs(new_id, datasets=datasets)
            target.set_terminated(new_id, "FINISHED")
        return time.perf_counter() - start
