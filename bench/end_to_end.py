"""Items 3, 4 and 5: whole programs as a user runs them, each in a fresh subprocess.

linreg-train writes into a temporary sqlite store copied from one created beforehand, so the
one-time schema creation (~8 s) is not timed; the reference is the tutorial as a script.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REFERENCE_SCRIPT = ROOT / "bench" / "reference_script.py"


class Stores:
    """Fresh copies of one initialised sqlite store (made once per bench process: its
    schema costs ~8 s of CPU)."""

    _made: Path | None = None

    def __init__(self, workdir: Path):
        self._workdir = workdir
        self._template = workdir / "template.db"
        given = os.environ.get("LINREG_BENCH_TEMPLATE")  # an initialised store to copy (tests)
        if given and Stores._made is None and Path(given).exists():
            Stores._made = Path(given)
        if Stores._made is None or not Stores._made.exists():
            made = Path(tempfile.mkdtemp(prefix="linreg-bench-template-")) / "template.db"
            atexit.register(shutil.rmtree, made.parent, True)
            code = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
            subprocess.run(
                [sys.executable, "-c", code, f"sqlite:///{made}"],
                check=True, capture_output=True, env=_env(),
            )  # fmt: skip
            Stores._made = made
        shutil.copy(Stores._made, self._template)
        self._count = 0

    def fresh(self) -> Path:
        self._count += 1
        folder = self._workdir / f"store{self._count}"
        folder.mkdir()
        shutil.copy(self._template, folder / "mlflow.db")
        return folder


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **extra}
    for name in ("LINREG_PARENT_RUN_ID", "LINREG_EXPERIMENT_ID"):
        env.pop(name, None)
    return env


def timed_output(command: list[str], cwd: Path, **env: str) -> tuple[float, str]:
    """Wall seconds of command and its stdout + stderr; raises when it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=_env(**env), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        failed = f"{' '.join(command)} exited {result.returncode}"
        raise RuntimeError(f"{failed}:\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def timed(command: list[str], cwd: Path, **env: str) -> float:
    return timed_output(command, cwd, **env)[0]


def train_output(stores: Stores, *overrides: str) -> tuple[float, str]:
    folder = stores.fresh()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return timed_output([str(BIN / "linreg-train"), *overrides], folder, MLFLOW_TRACKING_URI=uri)


def train(stores: Stores, *overrides: str) -> float:
    return train_output(stores, *overrides)[0]


def reference(workdir: Path, lr: float | None = None) -> float:
    args = [] if lr is None else [str(lr)]
    return timed([sys.executable, str(REFERENCE_SCRIPT), *args], workdir)


def default_experiment(repeats: int) -> dict:
    """Item 3: median wall time of `linreg-train` (MLflow included) and of the reference script."""
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as tmp:
        workdir = Path(tmp)
        stores = Stores(workdir)
        ours, ref = [], []
        for _ in range(repeats):  # alternated, so load on the machine hits both alike
            ours.append(train(stores))
            ref.append(reference(workdir))
    ours_s, ref_s = statistics.median(ours), statistics.median(ref)
    return {
        "repeats": repeats, "ours_s": ours_s, "reference_s": ref_s,
        "ours_all_s": ours, "reference_all_s": ref, "ours_over_reference": ours_s / ref_s,
    }  # fmt: skip


def learning_rates(count: int) -> list[float]:
    """count values spaced evenly in log scale from 0.001 to 0.1, 3 significant digits."""
    if count == 1:
        return [0.03]
    return [float(f"{0.001 * 100 ** (i / (count - 1)):.3g}") for i in range(count)]


def sweep(count: int) -> dict:
    """Item 4: `linreg-train -m optimizer.lr=...` (auto and autograd) against count script runs."""
    lrs = learning_rates(count)
    values = "optimizer.lr=" + ",".join(str(lr) for lr in lrs)
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as tmp:
        workdir = Path(tmp)
        stores = Stores(workdir)
        ours = train(stores, "-m", values, f"hydra.sweep.dir={workdir / 'multirun'}")
        autograd = train(
            stores, "-m", values, "trainer.engine=autograd", f"hydra.sweep.dir={workdir / 'ag'}"
        )
        ref = sum(reference(workdir, lr) for lr in lrs)
    return {
        "runs": count, "ours_s": ours, "autograd_sweep_s": autograd, "reference_runs_s": ref,
        "x_reference": ref / ours, "x_autograd": autograd / ours,
    }  # fmt: skip


TRACKING_CONF = ROOT / "conf" / "tracking" / "local.yaml"


def has_plot_switch() -> bool:
    """True when conf/tracking/local.yaml has a log_plots key: runs can skip their plots."""
    return re.search(r"^log_plots\s*:", TRACKING_CONF.read_text(), re.MULTILINE) is not None


def vectorized(cases: list[dict], rounds: int = 1) -> list[dict]:
    """Item 5: each sweep with hydra/launcher=vectorized against the basic launcher (MLflow).

    A case is {"case", "N", "D" (None: the default 3 features), "lrs", "batches"}; both
    launchers use trainer.engine=auto. Each case also runs with tracking.log_plots=false where
    that key exists (per-run matplotlib plots otherwise dominate), unless the case names its
    "log_plots" settings (the quick run: one each).

    rounds: each sweep runs this many times with each launcher, the two alternated (basic
    first, then vectorized first, ...), and each launcher's median is scored: where training
    is a small part of a job the two launchers differ by less than the machine's noise, and
    one run each (the first also paying the case's first-run costs) read that noise.
    """
    switch = has_plot_switch()
    rows = []
    with tempfile.TemporaryDirectory(prefix="linreg-bench-") as tmp:
        workdir = Path(tmp)
        stores = Stores(workdir)
        for case in cases:
            lrs = learning_rates(case["lrs"])
            overrides = [
                "-m", "optimizer.lr=" + ",".join(str(lr) for lr in lrs),
                "trainer.batch_size=" + ",".join(str(b) for b in case["batches"]),
                f"dataset.num_samples={case['N']}",
            ]  # fmt: skip
            if case["D"] is not None:
                overrides.append(f"dataset.num_features={case['D']}")
            plot_settings = case.get("log_plots", [True, False])
            for log_plots in plot_settings if switch else [True]:
                extra = [] if log_plots else ["tracking.log_plots=false"]
                folder = workdir / f"sweep{len(rows)}"
                times: dict[str, list[float]] = {"basic": [], "vectorized": []}
                passes = None  # as the vectorized launcher says it grouped the jobs
                for round_ in range(rounds):
                    order = ("basic", "vectorized") if round_ % 2 == 0 else ("vectorized", "basic")
                    for launcher in order:
                        seconds, output = train_output(
                            stores, *overrides, *extra, f"hydra/launcher={launcher}",
                            f"hydra.sweep.dir={folder / f'{launcher}{round_}'}",
                        )  # fmt: skip
                        times[launcher].append(seconds)
                        if launcher == "vectorized" and (
                            launched := re.search(r"Launching \d+ jobs as (\d+) passes", output)
                        ):
                            passes = int(launched.group(1))
                basic, ours = (statistics.median(times[k]) for k in ("basic", "vectorized"))
                rows.append({
                    "case": case["case"], "N": case["N"], "D": case["D"] or 3,
                    "lrs": len(lrs), "batches": list(case["batches"]),
                    "runs": len(lrs) * len(case["batches"]), "log_plots": log_plots,
                    "passes": passes,
                    "basic_s": basic, "vectorized_s": ours, "x_basic": basic / ours,
                    "basic_runs_s": times["basic"], "vectorized_runs_s": times["vectorized"],
                })  # fmt: skip
    return rows
