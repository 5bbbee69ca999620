"""`make bench`: linreg_lab against the reference tutorial loop and scikit-learn, in one run.

    .venv/bin/python bench/run.py            # everything, ~10-15 minutes
    .venv/bin/python bench/run.py --quick    # small sizes, no 10^7, a 2-run sweep (a smoke test)
    .venv/bin/python bench/run.py --only vectorized   # one item (JSON: bench/results/only.json)

Prints one table per item and writes every figure to bench/results/latest.json. Compare ratios
taken in one run: absolute times drift with the load on this machine's shared cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/run.py` puts bench/, not the root, on the path

from bench import (  # noqa: E402
    distributed,
    end_to_end,
    limits,
    optuna_search,
    paths,
    report,
    streamed,
    sweeps,
    table,
    throughput,
)

FULL = {
    "throughput_shapes": [(1000, 3), (100_000, 3), (100_000, 100)],
    "reference_max_steps": 1500,
    "min_seconds": 0.3,
    "paths": [(100_000, 100, 100), (100_000, 100, 1000), (100_000, 100, 10_000),
              (20_000, 1000, 10_000)],
    "large": [1_000_000, 10_000_000],
    "table": [(10_000_000, 100)],
    "streamed": [(10_000_000, 100), (30_000_000, 100)],  # 4 GB and 12 GB on disk
    "distributed": [(10_000_000, 100), (20_000, 100)],  # the goal's shape; a step's latency
    "held": (2_000_000, 100),  # 2 torchrun ranks: a held share against streaming, loading
    "optuna": {"n_trials": 30, "epochs": 10, "grid_lrs": 16},  # a 64-point grid
    "repeats": 3,
    "sweep_runs": 16,
    "vectorized": [
        {"case": "lr", "N": 1_000_000, "D": 100, "lrs": 16, "batches": [100]},
        {"case": "grid", "N": 100_000, "D": None, "lrs": 4, "batches": [10, 32, 100, 1000]},
    ],
    "sweeps": [16, 64, 256],  # jobs of the peer sweep and of ours
    "sweeps_joblib": [64],  # the sizes hydra/launcher=joblib runs at too
}  # fmt: skip
SECTIONS = ["throughput", "paths", "large", "table", "streamed", "distributed", "held",
            "default_experiment", "sweep", "vectorized", "sweeps", "optuna", "limits"]  # fmt: skip
QUICK = {
    "throughput_shapes": [(1000, 3), (2000, 100)],
    "reference_max_steps": 100,
    "min_seconds": 0.02,
    "paths": [(20_000, 100, 1000)],
    "large": [100_000],
    "table": [(100_000, 10)],
    "streamed": [(100_000, 10), (300_000, 10)],
    "distributed": [(200_000, 10), (2000, 10)],
    "held": (2_000_000, 5),  # two row groups (one a rank): each share fits where the table does not
    "optuna": {"n_trials": 4, "epochs": 2, "grid_lrs": 2, "datasets": ["tutorial"]},
    "repeats": 1,
    "sweep_runs": 2,
    "vectorized": [  # each case with one of the two plot settings: both kinds still run
        {"case": "lr", "N": 2000, "D": 100, "lrs": 4, "batches": [100], "log_plots": [True]},
        {"case": "grid", "N": 2000, "D": None, "lrs": 2, "batches": [10, 100],
         "log_plots": [False]},
    ],
    "sweeps": [2],
    "sweeps_joblib": [],
    "sweeps_variants": ["basic", "vectorized"],  # the _noplots ones differ by one setting
}  # fmt: skip


def large(sizes: list[int]) -> list[dict]:
    """Item 2, one subprocess per size, so each peak memory is that size's own."""
    rows = []
    for num_samples in sizes:
        out = subprocess.run(
            [sys.executable, "-m", "bench.large", str(num_samples), "100", "1000"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="ITEM",
        help=f"run only this item (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON file; default bench/results/latest.json (with --only: bench/results/only.json)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "bench" / "results" / ("only.json" if args.only else "latest.json")
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    results: dict = {"quick": args.quick, "machine": _machine()}

    def section(name: str, measure) -> None:
        if args.only and name not in args.only:
            return
        print(f"... {name}", file=sys.stderr, flush=True)
        results[name] = measure()
        report.print_section(name, results[name])

    section("throughput", lambda: throughput.measure(
        plan["throughput_shapes"], [1, 10, 100, 1000], plan["min_seconds"],
        plan["reference_max_steps"],
    ))  # fmt: skip
    section("paths", lambda: paths.measure(plan["paths"]))
    section("large", lambda: large(plan["large"]))
    section("table", lambda: table.measure(plan["table"]))
    section("streamed", lambda: streamed.measure(plan["streamed"]))
    section("distributed", lambda: distributed.measure(*plan["distributed"]))
    section("held", lambda: distributed.measure_held(plan["held"]))
    section("default_experiment", lambda: end_to_end.default_experiment(plan["repeats"]))
    section("sweep", lambda: end_to_end.sweep(plan["sweep_runs"]))
    section("vectorized", lambda: end_to_end.vectorized(plan["vectorized"], plan["repeats"]))
    section("sweeps", lambda: sweeps.measure(plan["sweeps"], plan["sweeps_joblib"],
                                             plan.get("sweeps_variants")))  # fmt: skip
    section("optuna", lambda: optuna_search.measure(**plan["optuna"]))
    section("limits", limits.measure)
    results["goals"] = report.goals(results)
    results["seconds"] = time.perf_counter() - started
    report.print_goals(results["goals"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{results['seconds']:.0f} s; JSON in {args.out}")
    return results


def _machine() -> dict:
    import numba
    import sklearn
    import torch

    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "numba": numba.__version__, "sklearn": sklearn.__version__,
        "cpus": len(__import__("os").sched_getaffinity(0)), "processor": platform.processor(),
    }  # fmt: skip


if __name__ == "__main__":
    main()
