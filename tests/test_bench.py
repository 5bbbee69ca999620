"""`bench/run.py --quick` runs end to end and writes every row (no timing is asserted).

One test per group of sections (`--only`), so that test workers share them out; together they
run every section of the quick plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def quick(tmp_path, template_store, *sections: str) -> tuple[dict, str]:
    out = tmp_path / "latest.json"
    only = [arg for section in sections for arg in ("--only", section)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", *only, "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "LINREG_BENCH_TEMPLATE": str(template_store)},  # made once a worker
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(out.read_text())
    assert set(sections) <= set(results) and "Goals" in result.stdout
    return results, result.stdout


def test_the_engines_rows(tmp_path, template_store):
    results, _ = quick(tmp_path, template_store, "throughput", "paths", "large", "table",
                       "streamed")  # fmt: skip
    throughput = results["throughput"]
    assert {(r["N"], r["D"], r["batch"]) for r in throughput} >= {
        (1000, 3, b) for b in (1, 10, 100, 1000)
    }
    for row in throughput:
        for key in ("ours_samples_per_s", "reference_samples_per_s", "sklearn_samples_per_s"):
            assert row[key] > 0, (key, row)
        assert row["ours_final_mse"] < 1e3  # trained, did not diverge
    (large,) = results["large"]
    assert large["ours_epoch_s"] > 0 and large["read_bandwidth_bytes_per_s"] > 0
    assert large["peak_rss_bytes"] >= large["data_bytes"]
    assert results["paths"][0]["compiled_s"] > 0
    (table,) = results["table"]  # a Parquet file loaded, then trained on
    assert table["N"] == 100_000 and table["load_s"] > 0 and table["read_table_s"] > 0
    assert table["table_epoch_s"] > 0 and table["peak_above_baseline_over_data"] > 0.5
    first, second = results["streamed"]  # streamed, in fresh processes; the first in memory too
    assert (first["N"], second["N"]) == (100_000, 300_000) and first["streamed"]
    assert first["epoch_s"] > 0 and first["memory_epoch_s"] > 0 and second["load_s"] > 0
    assert second["peak_above_baseline_bytes"] > 0 and "epoch_over_memory" not in second


def test_the_search_rows(tmp_path, template_store):
    results, _ = quick(tmp_path, template_store, "optuna")
    (optuna,) = results["optuna"]  # three real sweeps on the tutorial's data
    assert optuna["pruned"]["jobs"] == optuna["unpruned"]["jobs"] == 4
    assert optuna["grid"]["jobs"] == 8 and optuna["unpruned"]["pruned"] == 0
    assert optuna["unpruned"]["epochs"] == 4 * 2 >= optuna["pruned"]["epochs"]
    assert optuna["best_over_grid"] > 0 and optuna["grid"]["wall_s"] > 0


def test_the_programs_rows(tmp_path, template_store):
    results, _ = quick(tmp_path, template_store, "default_experiment", "sweep", "limits")
    assert results["default_experiment"]["ours_s"] > 0
    assert results["default_experiment"]["reference_s"] > 0
    sweep = results["sweep"]
    assert sweep["runs"] == 2 and sweep["ours_s"] > 0 and sweep["autograd_sweep_s"] > 0
    limits = results["limits"]
    assert limits["dead_server_s"] > 0 and limits["ui_start_s"] > 0
    assert limits["ui_server_rss_mb"] > 0 and limits["ctrl_c_s"] > 0
    goals = {g["goal"] for g in results["goals"]}
    assert "a dead server refused within 30 s" in goals


def test_the_ranks_rows(tmp_path, template_store):
    results, _ = quick(tmp_path, template_store, "distributed", "held")
    held = results["held"]  # 2 torchrun ranks on a Parquet table, three ways
    assert [(r["case"], r["streamed"], r["held"]) for r in held] == [
        ("streamed", True, False),
        ("held", True, True),
        ("in memory", False, False),
    ]
    assert all(r["epoch_s"] > 0 and r["N"] == 2_000_000 for r in held)
    rows = results["distributed"]  # one rank against two, at the goal's batch and at batch 10
    assert [(r["case"], r["processes"]) for r in rows] == [
        ("goal", 1),
        ("goal", 2),
        ("latency", 1),
        ("latency", 2),
    ]
    assert all(r["epoch_s"] > 0 and r["step_ms"] > 0 for r in rows)
    assert rows[1]["over_one"] > 0 and rows[3]["reduction_ms"] > 0


def test_the_launchers_rows(tmp_path, template_store):
    results, _ = quick(tmp_path, template_store, "vectorized")
    vectorized = results["vectorized"]
    # Each case once, one with the per-run plots and one without (the full run: both each).
    assert {(r["case"], r["log_plots"]) for r in vectorized} == {("lr", True), ("grid", False)}
    for row in vectorized:
        assert row["basic_s"] > 0 and row["vectorized_s"] > 0 and row["x_basic"] > 0, row
        assert row["passes"] == len(row["batches"]), row  # one pass per batch size
    (lr,) = [r for r in vectorized if r["case"] == "lr"]
    assert (lr["N"], lr["D"], lr["runs"], lr["batches"]) == (2000, 100, 4, [100])
    (grid,) = [r for r in vectorized if r["case"] == "grid"]
    assert (grid["N"], grid["D"], grid["runs"], grid["batches"]) == (2000, 3, 4, [10, 100])
    goals = {g["goal"] for g in results["goals"]}
    assert any("vectorized" in g for g in goals)


def test_the_sweeps_rows(tmp_path, template_store):
    results, _ = quick(tmp_path, template_store, "sweeps")
    (sweeps,) = results["sweeps"]  # the hand-written peer against ours, each store checked
    assert sweeps["jobs"] == 2 and sweeps["peer_s"] > 0 and sweeps["basic_s"] > 0
    assert sweeps["vectorized_s"] > 0 and sweeps["x_basic"] > 0
    assert sweeps["peer_cpu_s"] > 0 and sweeps["basic_cpu_s"] > 0  # every process's CPU
    assert sweeps["hydra_s"] > 0 and sweeps["mlflow_s"] > 0  # the floors, measured too
