"""Item: an Optuna search with pruning against the same search unpruned and a 64-point grid.

For each dataset (the tutorial's synthetic data; diabetes, ranked by val/loss), in fresh
stores, three real `linreg-train -m` commands:
- pruned: experiment=lr_batch_optuna_pruned (TPE, seed 0, successive halving): n_trials trials;
- unpruned: the same with hydra.sweeper.pruner=null (every trial trains every epoch);
- grid: 16 log-spaced learning rates (1e-4 to 0.5, the search's range) x the search's 4 batch
  sizes, the same epochs, with the vectorized launcher.
Each row: wall time, CPU of every process, epochs trained (from each run's train/loss
history), the best value (the sweep's ranking metric of its best FINISHED run), and the
pruned search's ratios: epochs against n_trials x epochs (what the same trials would train
without pruning), best value against the grid's.
"""

from __future__ import annotations

import math
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bench.end_to_end import BIN

BATCHES = (10, 32, 100, 320)
DATASETS = {"tutorial": [], "diabetes": ["dataset=diabetes"]}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command(folder: Path, experiment: str, args: list[str]) -> dict:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    started, cpu = time.perf_counter(), _cpu()
    subprocess.run(
        [str(BIN / "linreg-train"), "-m", *args, f"tracking.experiment_name={experiment}",
         f"tracking.uri={uri}", "tracking.log_plots=false", "tracking.register_best=false",
         f"hydra.sweep.dir={folder / experiment}"],
        cwd=folder, check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - started, _cpu() - cpu
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=10000)
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    metric = "val/loss" if any("val/loss" in r.data.metrics for r in jobs) else "train/loss"
    epochs = sum(len(client.get_metric_history(r.info.run_id, "train/loss")) for r in jobs)
    finished = [r.data.metrics.get(metric, math.inf) for r in jobs if r.info.status == "FINISHED"]
    return {"jobs": len(jobs), "wall_s": wall, "cpu_s": cpu, "epochs": epochs,
            "best": min(finished, default=math.inf), "metric": metric,
            "pruned": sum(1 for r in jobs if "linreg.pruned" in r.data.tags)}  # fmt: skip


def measure(n_trials: int, epochs: int, grid_lrs: int, datasets=tuple(DATASETS)) -> list[dict]:
    rows = []
    lrs = [1e-4 * (0.5 / 1e-4) ** (i / (grid_lrs - 1)) for i in range(grid_lrs)]
    with tempfile.TemporaryDirectory(prefix="linreg-bench-optuna-") as tmp:
        for name in datasets:
            data = DATASETS[name]
            folder = Path(tmp) / name
            folder.mkdir()
            search = ["experiment=lr_batch_optuna_pruned", f"hydra.sweeper.n_trials={n_trials}",
                      f"trainer.epochs={epochs}", *data]  # fmt: skip
            pruned = _command(folder, "pruned", search)
            unpruned = _command(
                folder,
                "unpruned",
                [*search, "hydra.sweeper.pruner=null", "hydra.sweeper.study_name=unpruned"],
            )
            grid = _command(folder, "grid", [
                "hydra/launcher=vectorized", f"trainer.epochs={epochs}", *data,
                "optimizer.lr=" + ",".join(f"{lr:.6g}" for lr in lrs),
                "trainer.batch_size=" + ",".join(map(str, BATCHES)),
            ])  # fmt: skip
            rows.append({
                "dataset": name, "n_trials": n_trials, "epochs_per_trial": epochs,
                "pruned": pruned, "unpruned": unpruned, "grid": grid,
                "epochs_over_unpruned": pruned["epochs"] / (n_trials * epochs),
                "best_over_grid": pruned["best"] / grid["best"],
                "unpruned_best_over_grid": unpruned["best"] / grid["best"],
            })  # fmt: skip
    return rows
