"""The benchmark's tables and the issue's goals, read from the measured figures."""

from __future__ import annotations

from bench import limits


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _x(value: float) -> str:
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2g}x"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    for line in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)))


def print_section(name: str, data) -> None:
    print()
    _PRINTERS[name](data)


def _throughput(rows: list[dict]) -> None:
    print("1. samples/s of a 3-epoch fit (setup included, best of repeats, 1 thread)")
    print("   reference = the tutorial's DataLoader loop, extrapolated from the steps shown;")
    print("   scikit-learn SGDRegressor has batch 1 only: each batch is compared with it")
    _table(
        ["N", "D", "batch", "ours", "reference", "ref steps", "sklearn", "vs ref", "vs sklearn",
         "MSE ours", "MSE sklearn"],
        [[r["N"], r["D"], r["batch"], _si(r["ours_samples_per_s"]),
          _si(r["reference_samples_per_s"]), f'{r["reference_steps_run"]}/{r["reference_steps"]}',
          _si(r["sklearn_samples_per_s"]), _x(r["x_reference"]), _x(r["x_sklearn"]),
          f'{r["ours_final_mse"]:.2e}', f'{r["sklearn_final_mse"]:.2e}'] for r in rows],
    )  # fmt: skip


def _paths(rows: list[dict]) -> None:
    print("   analytic engine on CPU, one epoch: compiled loop vs the BLAS path (torch threads)")
    _table(
        ["N", "D", "batch", "compiled", "BLAS 1 thr", "BLAS 2 thr", "BLAS/compiled"],
        [[r["N"], r["D"], r["batch"], f'{r["compiled_s"] * 1e3:.1f} ms',
          f'{r["blas_1_thread_s"] * 1e3:.1f} ms', f'{r["blas_2_threads_s"] * 1e3:.1f} ms',
          _x(r["x_best_blas"])] for r in rows],
    )  # fmt: skip


def _large(rows: list[dict]) -> None:
    print("2. one epoch, D 100, batch 1000 (reference extrapolated from its first steps)")
    _table(
        ["N", "ours", "samples/s", "X read/s", "bandwidth", "% of bw", "reference", "ref steps",
         "vs ref", "peak/data", "(above baseline)"],
        [[r["N"], f'{r["ours_epoch_s"]:.3g} s', _si(r["ours_samples_per_s"]),
          _si(r["x_bytes_read_per_s"], "B/s"), _si(r["read_bandwidth_bytes_per_s"], "B/s"),
          f'{100 * r["fraction_of_bandwidth"]:.0f}%', f'{r["reference_epoch_s"]:.3g} s',
          r["reference_extrapolated_from_steps"], _x(r["x_reference"]),
          f'{r["peak_over_data"]:.2f}', f'{r["peak_above_baseline_over_data"]:.2f}'] for r in rows],
    )  # fmt: skip


def _default_experiment(r: dict) -> None:
    print(f"3. default experiment end to end, median of {r['repeats']} (fresh processes)")
    _table(
        ["linreg-train (MLflow)", "reference script", "ours/reference"],
        [[f"{r['ours_s']:.2f} s", f"{r['reference_s']:.2f} s", f"{r['ours_over_reference']:.2f}"]],
    )


def _sweep(r: dict) -> None:
    print(f"4. {r['runs']}-run learning-rate sweep (linreg-train -m, basic launcher, MLflow)")
    _table(
        ["sweep (auto)", "sweep (autograd)", f"{r['runs']} reference runs", "vs ref",
         "vs autograd"],
        [[f'{r["ours_s"]:.1f} s', f'{r["autograd_sweep_s"]:.1f} s',
          f'{r["reference_runs_s"]:.1f} s', _x(r["x_reference"]), _x(r["x_autograd"])]],
    )  # fmt: skip


def _vectorized(rows: list[dict]) -> None:
    print("5. vectorized sweeps: hydra/launcher=vectorized vs basic (engine=auto, MLflow)")
    print("   one pass per batch size; plots = tracking.log_plots; each launcher's median of")
    rounds = len(rows[0].get("basic_runs_s", [None])) if rows else 1
    print(f"   {rounds} run(s), the two alternated; every run's time in the JSON")
    _table(
        ["sweep", "runs", "N", "D", "batch", "plots", "passes", "basic", "vectorized", "vs basic"],
        [[f'{r["lrs"]} lrs' + (f' x {len(r["batches"])} batches' if len(r["batches"]) > 1 else ""),
          r["runs"], r["N"], r["D"], ",".join(str(b) for b in r["batches"]),
          "on" if r["log_plots"] else "off", "-" if r["passes"] is None else r["passes"],
          f'{r["basic_s"]:.1f} s', f'{r["vectorized_s"]:.1f} s', _x(r["x_basic"])] for r in rows],
    )  # fmt: skip


def _table_item(rows: list[dict]) -> None:
    print("6. a Parquet table of N x D float32 (a target too): load_table, then one epoch")
    print("   read_table and load_table each in a fresh process, alternated; medians")
    _table(
        ["N", "D", "read_table", "load_table", "load/read", "peak/data", "epoch", "synthetic",
         "epoch/synthetic"],
        [[r["N"], r["D"], f'{r["read_table_s"]:.2f} s', f'{r["load_s"]:.2f} s',
          _x(r["load_over_read_table"]), f'{r["peak_above_baseline_over_data"]:.2f}',
          f'{r["table_epoch_s"]:.3g} s', f'{r["synthetic_epoch_s"]:.3g} s',
          _x(r["epoch_over_synthetic"])] for r in rows],
    )  # fmt: skip


SWEEPS_VARIANTS = [  # bench/sweeps.py's variants of ours: (key, column)
    ("basic", "basic"), ("basic_noplots", "basic -plots"), ("vectorized", "vectorized"),
    ("vectorized_noplots", "vect. -plots"), ("joblib", "joblib 2"),
]  # fmt: skip


def _sweeps(rows: list[dict]) -> None:
    print("7. learning-rate sweeps: linreg-train -m against a hand-written Hydra + MLflow sweep")
    print("   peer = bench/peer_sweep/peer.py (basic launcher, one mlflow.start_run per job);")
    print("   -plots = tracking.log_plots=false; vs peer = peer s / ours s; each timed once")
    headers = ["jobs", "peer"]
    for _, column in SWEEPS_VARIANTS:
        headers += [column, "vs peer"]
    table = []
    for r in rows:
        line = [r["jobs"], f"{r['peer_s']:.1f} s"]
        for key, _ in SWEEPS_VARIANTS:
            seconds, ratio = r[f"{key}_s"], r[f"x_{key}"]
            line += ["-", "-"] if seconds is None else [f"{seconds:.1f} s", _x(ratio)]
        table.append(line)
    _table(headers, table)
    if rows and rows[0].get("peer_cpu_s"):
        print("   CPU seconds (user + system) of every process of each sweep (the helpers, the")
        print("   workers): on 2 shared cores, wall time follows CPU under load")
        names = [n for n in ("basic", "vectorized", "joblib") if rows[0].get(f"{n}_cpu_s")]
        _table(["jobs", "peer", *names, *[f"{n}/peer" for n in names]],
               [[r["jobs"], f"{r['peer_cpu_s']:.1f} s",
                 *[f"{r[f'{n}_cpu_s']:.1f} s" if r.get(f"{n}_cpu_s") else "-" for n in names],
                 *[f"{r[f'{n}_cpu_s'] / r['peer_cpu_s']:.2f}" if r.get(f"{n}_cpu_s") else "-"
                   for n in names]] for r in rows])  # fmt: skip
    if rows and rows[0].get("hydra_s") is not None:
        print("   floors: hydra = bench/peer_sweep/noop.py (our config, Hydra's basic launcher, a")
        print("   task that does nothing); mlflow = one of our job's runs written again per job")
        print("   through MlflowClient (tags, params, metrics, artifacts, dataset), in one process")
        _table(
            ["jobs", "hydra alone", "mlflow alone"],
            [[r["jobs"], f"{r['hydra_s']:.1f} s", f"{r['mlflow_s']:.1f} s"] for r in rows],
        )
    slope = rows[-1]["slope_ms"] if rows else {}
    if any(v is not None for v in slope.values()):
        print("   per-job overhead, ms: the slope of wall time from 64 to 256 jobs")
        _table(list(slope), [["-" if ms is None else f"{ms:.0f}" for ms in slope.values()]])


def _streamed(rows: list[dict]) -> None:
    print("   streamed Parquet (dataset.stream=true), each size in a fresh process: the")
    print("   statistics pass (load), one epoch, peak memory above the process's start; the")
    print("   first size also in memory (stream=false): the epoch's ratio")
    _table(
        ["N", "D", "batch", "load", "epoch", "in memory", "ratio", "peak", "vs first"],
        [[r["N"], r["D"], r["batch"], f'{r["load_s"]:.1f} s', f'{r["epoch_s"]:.2f} s',
          f'{r["memory_epoch_s"]:.2f} s' if "memory_epoch_s" in r else "-",
          _x(r["epoch_over_memory"]) if "epoch_over_memory" in r else "-",
          f'{r["peak_above_baseline_bytes"] / 2**30:.2f} GB', f'{r["peak_over_first"]:.2f}']
         for r in rows],
    )  # fmt: skip


def _distributed(rows: list[dict]) -> None:
    print("   data-parallel jobs (trainer.processes), each in a fresh process: the second epoch")
    print("   (the ranks' start apart); 'latency': batch 10, the per-step cost of the reduction")
    _table(
        ["case", "N", "D", "batch", "ranks", "threads", "epoch", "per step", "vs 1 rank", "start"],
        [[r["case"], r["N"], r["D"], r["batch"], r["processes"], r["threads"],
          f'{r["epoch_s"]:.3f} s', f'{r["step_ms"]:.2f} ms',
          _x(r["over_one"]) if "over_one" in r else "-", f'{r["start_s"]:.1f} s']
         for r in rows],
    )  # fmt: skip


def _held(rows: list[dict]) -> None:
    print("   a Parquet table on 2 torchrun ranks: streamed, each rank's share held from the first")
    print("   epoch on (stream=auto over a budget), loaded whole by every rank; the second epoch")
    _table(
        ["case", "N", "D", "batch", "epoch", "vs in memory", "peak (rank 0)"],
        [[r["case"], r["N"], r["D"], r["batch"], f'{r["epoch_s"]:.3f} s', _x(r["over_memory"]),
          f'{r["peak_rss_bytes"] / 2**30:.2f} GB'] for r in rows],
    )  # fmt: skip


def _optuna(rows: list[dict]) -> None:
    print("   an Optuna search with pruning (successive halving) against the same search")
    print("   unpruned and a grid of 16 lrs x 4 batch sizes: real linreg-train -m, fresh stores")
    _table(
        ["data", "sweep", "jobs", "pruned", "epochs", "wall", "CPU", "best"],
        [[r["dataset"], kind, r[kind]["jobs"], r[kind]["pruned"], r[kind]["epochs"],
          f'{r[kind]["wall_s"]:.1f} s', f'{r[kind]["cpu_s"]:.1f} s',
          f'{r[kind]["best"]:.5g} ({r[kind]["metric"]})']
         for r in rows for kind in ("pruned", "unpruned", "grid")],
    )  # fmt: skip


_PRINTERS = {
    "limits": limits.print_rows,
    "optuna": _optuna,
    "distributed": _distributed,
    "held": _held,
    "streamed": _streamed,
    "table": _table_item,
    "throughput": _throughput, "paths": _paths, "large": _large,
    "default_experiment": _default_experiment, "sweep": _sweep, "vectorized": _vectorized,
    "sweeps": _sweeps,
}  # fmt: skip

VECTORIZED_GOALS = [  # (case, full-size N, minimum speed-up over the basic launcher, label)
    ("lr", 1_000_000, 1, "16 lrs N 10^6 D 100 batch 100"),  # never slower than basic
    ("grid", 100_000, 1, "4 lrs x 4 batches N 10^5 D 3"),
]


def goals(results: dict) -> list[dict]:
    """Each goal of the issue with its measured value: met, not met, or n/a (not measured)."""
    out: list[dict] = []

    def goal(name: str, value: float | None, ok) -> None:
        out.append({"goal": name, "value": value, "met": None if value is None else ok(value)})

    if "throughput" in results:
        _throughput_goals(results["throughput"], goal)
    if "large" in results:
        big = _find(results["large"], N=10_000_000) or {}
        goal("N 10^7 epoch: >= 50x reference", big.get("x_reference"), lambda v: v >= 50)
        goal("N 10^7 epoch: >= 25% of read bandwidth", big.get("fraction_of_bandwidth"),
             lambda v: v >= 0.25)  # fmt: skip
        goal("N 10^7: peak memory <= 1.3x data", big.get("peak_over_data"), lambda v: v <= 1.3)
    for row in [r for r in results.get("table", []) if r["N"] == 10_000_000]:
        goal("Parquet 10^7 x 100: load <= 2x read_table", row["load_over_read_table"],
             lambda v: v <= 2)  # fmt: skip
        goal("Parquet 10^7 x 100: peak <= 2.5x data", row["peak_above_baseline_over_data"],
             lambda v: v <= 2.5)  # fmt: skip
        goal("Parquet 10^7 x 100: epoch <= 1.1x synthetic", row["epoch_over_synthetic"],
             lambda v: v <= 1.1)  # fmt: skip
    if "default_experiment" in results:
        goal("default experiment <= 1.5x reference script",
             results["default_experiment"]["ours_over_reference"], lambda v: v <= 1.5)  # fmt: skip
    if "sweep" in results:
        sweep = results["sweep"]
        full = sweep["runs"] == 16
        goal("16-run sweep >= 5x 16 reference runs", sweep["x_reference"] if full else None,
             lambda v: v >= 5)  # fmt: skip
        goal("16-run sweep faster than engine=autograd", sweep["x_autograd"] if full else None,
             lambda v: v > 1)  # fmt: skip
    for case, full_n, factor, label in VECTORIZED_GOALS:
        for row in [r for r in results.get("vectorized", []) if r["case"] == case]:
            plots = "plots on" if row["log_plots"] else "plots off"
            goal(f"{label} ({plots}): vectorized never slower than basic (>= {factor}x)",
                 row["x_basic"] if row["N"] == full_n else None,
                 lambda v, factor=factor: v >= factor)  # fmt: skip
    if "sweeps" in results:
        _sweeps_goals(results["sweeps"], goal)
    for row in results.get("streamed", []):
        full = row["D"] == 100 and row["N"] >= 10_000_000
        if row["N"] == 30_000_000 or not full:
            goal(f"streamed {row['N']} x {row['D']}: peak <= 2 GB",
                 row["peak_above_baseline_bytes"] / 2**30 if full else None,
                 lambda v: v <= 2)  # fmt: skip
            goal(f"streamed {row['N']} x {row['D']}: peak within 5% of the first size's",
                 row["peak_over_first"] if full else None, lambda v: v <= 1.05)  # fmt: skip
        if "epoch_over_memory" in row:
            goal(f"streamed {row['N']} x {row['D']}: epoch <= 1.5x in memory",
                 row["epoch_over_memory"] if full else None, lambda v: v <= 1.5)  # fmt: skip
    for row in results.get("distributed", []):
        if row["case"] == "goal" and row["processes"] == 2:
            full = row["N"] == 10_000_000 and row["D"] == 100
            goal("2 ranks x 1 thread: epoch <= 1.3x 1 rank x 2 threads (N 10^7, D 100, batch "
                 "10^5)", row["over_one"] if full else None, lambda v: v <= 1.3)  # fmt: skip
    for row in results.get("optuna", []):
        full = row["n_trials"] >= 30 and row["grid"]["jobs"] == 64
        goal(
            f"Optuna with pruning on {row['dataset']}: epochs <= 40% of the same trials unpruned",
            row["epochs_over_unpruned"] if full else None,
            lambda v: v <= 0.4,
        )
        goal(f"Optuna with pruning on {row['dataset']}: best within 2% of the 64-point grid's",
             row["best_over_grid"] if full else None, lambda v: v <= 1.02)  # fmt: skip
    if "limits" in results:  # the README's promises, once asserted with a clock in tests
        limits = results["limits"]
        goal("a dead server refused within 30 s", limits["dead_server_s"], lambda v: v <= 30)
        goal("Ctrl-C ends a run within 5 s", limits["ctrl_c_s"], lambda v: v <= 5)
        goal("linreg-ui answers within 60 s", limits["ui_start_s"], lambda v: v <= 60)
        goal("linreg-ui's server holds < 1500 MB", limits["ui_server_rss_mb"], lambda v: v < 1500)
    return out


def _sweeps_goals(rows: list[dict], goal) -> None:
    for jobs in (64, 256):
        row = _find(rows, jobs=jobs)
        cpu = row and row.get("basic_cpu_s") and row.get("peer_cpu_s") and (
            row["basic_cpu_s"] / row["peer_cpu_s"])  # fmt: skip
        goal(f"{jobs}-job sweep, plots on: ours' CPU (every process) <= 0.5x the peer's",
             cpu or None, lambda v: v <= 0.5)  # fmt: skip
        goal(f"{jobs}-job sweep, plots on: ours' wall time >= 3x faster than the peer's",
             row and row["x_basic"], lambda v: v >= 3)  # fmt: skip
    full = {16, 64, 256} <= {r["jobs"] for r in rows}
    for plots, suffix in (("on", ""), ("off", "_noplots")):
        ratios = [r[f"basic{suffix}_s"] / r[f"vectorized{suffix}_s"] for r in rows
                  if r.get(f"basic{suffix}_s") and r.get(f"vectorized{suffix}_s")]  # fmt: skip
        goal(f"sweeps 16/64/256 jobs, plots {plots}: vectorized as fast as basic (worst)",
             min(ratios) if full and ratios else None, lambda v: v >= 1)  # fmt: skip


def _throughput_goals(rows: list[dict], goal) -> None:
    for n, d in sorted({(r["N"], r["D"]) for r in rows}):
        for batch in (1, 10):
            row = _find(rows, N=n, D=d, batch=batch)
            goal(f"faster than SGDRegressor, N {n} D {d} batch {batch}",
                 row and row["x_sklearn"], lambda v: v > 1)  # fmt: skip
    row = _find(rows, N=1000, D=3, batch=10)
    goal("N 1000 D 3 batch 10: >= 1000x reference", row and row["x_reference"], lambda v: v >= 1000)
    row = _find(rows, N=1000, D=3, batch=1000)
    goal("N 1000 D 3 batch 1000: >= 100x reference", row and row["x_reference"], lambda v: v >= 100)


def _find(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def print_goals(rows: list[dict]) -> None:
    print("\nGoals")
    for r in rows:
        mark = {True: "met", False: "NOT MET", None: "n/a"}[r["met"]]
        value = "-" if r["value"] is None else f"{r['value']:.3g}"
        print(f"  {mark:>7}  {r['goal']}  ({value})")
