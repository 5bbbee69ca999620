"""Compare a sweep's child runs: a table, a picture (sweep_plot), the best run."""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from linreg_lab.tracking import records, sweep_plot
from linreg_lab.tracking.params import SEED_KEYS, TAG_DATA_KEY
from linreg_lab.tracking.tags import FAILED, FINISHED, KILLED, PRUNED, TAG_FAILURE, TAG_PRUNED

if TYPE_CHECKING:  # this module runs in the MLflow helper; importers need no mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Run

TAG_SWEEP_Q = "`linreg.sweep`"  # quoted for MLflow's filter syntax (the key has a dot)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    overrides: str
    status: str
    loss: float
    w_l2: float
    failure: str
    params: dict[str, str]
    val_loss: float = math.nan
    lsq_l2: float = math.nan  # the distance to the least-squares solution (no truth needed)
    metrics: dict[str, float] = field(default_factory=dict)  # every metric's last value
    # A configuration's row (replicates averaged): how many runs, and each metric's standard
    # deviation over its FINISHED runs (loss, val_loss, w_l2, lsq_l2: their means).
    n: int = 1
    std: dict[str, float] = field(default_factory=dict)

    def sort_key(self, metric: str) -> tuple:
        loss = self.val_loss if metric == "val/loss" else self.loss
        return (self.status != FINISHED, loss if math.isfinite(loss) else math.inf)


def error_column(rows: list[Row]) -> str:
    """error/w_l2 where runs know their truth (synthetic data), else error/lsq_l2."""
    return "error/w_l2" if any(math.isfinite(row.w_l2) for row in rows) else "error/lsq_l2"


def _error(row: Row, column: str) -> float:
    return row.w_l2 if column == "error/w_l2" else row.lsq_l2


def ranking_metric(rows: list[Row]) -> str:
    """What ranks a sweep: val/loss when its runs have a validation split, else train/loss."""
    return "val/loss" if any(math.isfinite(row.val_loss) for row in rows) else "train/loss"


def children(client: MlflowClient, parent: Run) -> list[Run]:
    """The sweep's runs: its children, and the finished runs of an earlier sweep that a re-run
    of it took instead of training again (tag linreg.reused_runs)."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=50000,
    )
    for run_id in filter(None, parent.data.tags.get(TAG_REUSED, "").split(",")):
        try:
            runs.append(client.get_run(run_id))
        except Exception:  # deleted since: the comparison goes on without it
            continue
    return runs


TAG_REUSED = "linreg.reused_runs"


def finished_jobs(client: MlflowClient, experiment_id: str) -> dict[str, list]:
    """job key -> [run id, objective] of the latest FINISHED run of each job in the experiment
    (objective: val/loss where it exists, else train/loss)."""
    runs = client.search_runs(
        [experiment_id], "attributes.status = 'FINISHED'", max_results=50000,
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    found: dict[str, list] = {}
    for run in runs:
        key = run.data.tags.get("linreg.job_key")
        metrics = run.data.metrics
        objective = metrics.get("val/loss", metrics.get("train/loss"))
        if key and objective is not None:
            found[key] = [run.info.run_id, objective]
    return found


def latest_sweep(client: MlflowClient) -> Run | None:
    """The most recently started sweep parent run in any experiment."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        ids, f"tags.{TAG_SWEEP_Q} = 'true'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def rows_of(runs: list[Run]) -> list[Row]:
    rows = [
        Row(
            run.info.run_id,
            run.info.run_name or "",
            run.data.tags.get("linreg.overrides", ""),
            _status(run),
            run.data.metrics.get("train/loss", math.nan),
            run.data.metrics.get("error/w_l2", math.nan),
            run.data.tags.get(TAG_FAILURE, ""),
            {**run.data.params, **_overrides(run.data.tags.get("linreg.overrides", ""))},
            run.data.metrics.get("val/loss", math.nan),
            run.data.metrics.get("error/lsq_l2", math.nan),
            dict(run.data.metrics),
        )
        for run in runs
    ]
    metric = ranking_metric(rows)
    return sorted(rows, key=lambda row: row.sort_key(metric))


def _status(run: Run) -> str:
    """The run's MLflow status, or PRUNED for a run a sweeper's pruner stopped."""
    if run.info.status == KILLED and TAG_PRUNED in run.data.tags:
        return PRUNED
    return run.info.status


def _overrides(tag: str) -> dict[str, str]:
    """'optimizer.lr=0.1 optimizer=adam' -> {'optimizer.lr': '0.1', 'optimizer': 'adam'}."""
    pairs = (item.lstrip("+~").partition("=") for item in tag.split() if "=" in item)
    return {key: value for key, _, value in pairs}


def varied_keys(rows: list[Row]) -> list[str]:
    """What the sweep swept: the command-line overrides whose values differ between runs
    (a config group such as `optimizer` included), else the params that differ."""

    def differing(keys) -> list[str]:
        return [k for k in sorted(keys) if len({row.params.get(k) for row in rows}) > 1]

    swept = differing({k for row in rows for k in _overrides(row.overrides)})
    return swept or differing({k for row in rows for k in row.params})


def replicates(rows: list[Row], keys: list[str]) -> tuple[list[Row], list[str]]:
    """(rows, keys) to compare: per run, or, where seeds were swept, one row per configuration
    (the other swept keys' values): n runs, the mean and standard deviation of each metric over
    its FINISHED runs, its best run's id; ranked by the mean (configurations with a run that
    did not finish after the others)."""
    seeds = [k for k in keys if k in SEED_KEYS]
    if not seeds:
        return rows, keys
    kept = [k for k in keys if k not in SEED_KEYS]
    metric = ranking_metric(rows)
    groups: dict[tuple, list[Row]] = {}
    for row in rows:  # rows come ranked: each group's first is its best run
        groups.setdefault(tuple(row.params.get(k, "") for k in kept), []).append(row)
    configs = [_config_row(group, kept, metric) for group in groups.values()]
    return sorted(configs, key=lambda row: row.sort_key(metric)), kept


def _config_row(group: list[Row], keys: list[str], metric: str) -> Row:
    finished = [row for row in group if row.status == FINISHED]
    statuses = {row.status for row in group}
    status = FINISHED if statuses == {FINISHED} else (KILLED if KILLED in statuses else FAILED)
    if statuses == {PRUNED}:
        status = PRUNED
    names = sorted({k for row in finished for k in row.metrics})
    mean = {k: _mean([row.metrics.get(k, math.nan) for row in finished]) for k in names}
    std = {k: _std([row.metrics.get(k, math.nan) for row in finished]) for k in names}
    failure = (
        ""
        if status == FINISHED
        else f"{len(group) - len(finished)} of {len(group)} runs did not finish"
    )
    best = group[0]
    return Row(
        best.run_id, " ".join(f"{k}={best.params.get(k, '')}" for k in keys) or "all runs",
        best.overrides, status, mean.get("train/loss", math.nan), mean.get("error/w_l2", math.nan),
        failure, dict(best.params), mean.get("val/loss", math.nan),
        mean.get("error/lsq_l2", math.nan), mean, len(group), std,
    )  # fmt: skip


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _std(values: list[float]) -> float:
    """The sample standard deviation (n - 1); 0 for one value."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return 0.0 if finite else math.nan
    return statistics.stdev(finite)


def _cell(row: Row, metric: str, value: float, digits: str = ".4e") -> str:
    """'1.0000e-04' for a run; 'mean ± std (n)' for a configuration of replicates."""
    text = format(value, digits)
    if row.n > 1:
        text += f" ± {format(row.std.get(metric, math.nan), '.1e')} ({row.n})"
    return text


def swept_keys(parent: Run) -> list[str]:
    """The keys a sweep's command swept (its parent's sweep.override.* params: `k=a,b`,
    `k=range(...)`, a sweeper's params)."""
    keys = []
    for name, value in sorted(parent.data.params.items()):
        key, _, values = value.partition("=")
        if name.startswith("sweep.params."):
            keys.append(name.removeprefix("sweep.params."))
        elif name.startswith("sweep.override.") and (
            "," in values or values.startswith(("range(", "glob(", "choice(", "interval("))
        ):
            keys.append(key.lstrip("+~"))
    return list(dict.fromkeys(keys))


def to_full_csv(rows: list[Row]) -> str:
    """Every param and every metric (its last value) of every run, ranked: linreg-report --csv."""
    out = io.StringIO()
    writer = csv.writer(out)
    params = sorted({k for row in rows for k in row.params})
    metrics = sorted({k for row in rows for k in row.metrics})
    writer.writerow(["rank", "run_id", "run_name", "status", *params, *metrics, "failure"])
    for rank, row in enumerate(rows, start=1):
        writer.writerow([
            rank, row.run_id, row.name, row.status, *(row.params.get(k, "") for k in params),
            *(row.metrics.get(k, "") for k in metrics), row.failure,
        ])  # fmt: skip
    return out.getvalue()


def to_csv(rows: list[Row], keys: list[str]) -> str:
    """The comparison: a row per run, or per configuration where seeds were replicated (then
    n, and beside each metric's mean its standard deviation, `<metric>_std`)."""
    out = io.StringIO()
    writer = csv.writer(out)
    val = ranking_metric(rows) == "val/loss"
    losses = ["train/loss", "val/loss"] if val else ["train/loss"]
    error = error_column(rows)
    averaged = any(row.n > 1 for row in rows)
    shown = [*losses, error]
    head = [c for m in shown for c in ([m, f"{m}_std"] if averaged else [m])]
    writer.writerow(["rank", *keys, *(["n"] if averaged else []), *head, "status", "run_id",
                     "failure"])  # fmt: skip
    for rank, row in enumerate(rows, start=1):
        values = [row.params.get(k, "") for k in keys]
        means = {"train/loss": row.loss, "val/loss": row.val_loss, error: _error(row, error)}
        cells = [
            c
            for m in shown
            for c in ([means[m], row.std.get(m, math.nan)] if averaged else [means[m]])
        ]
        writer.writerow([rank, *values, *([row.n] if averaged else []), *cells, row.status,
                         row.run_id, row.failure])  # fmt: skip
    return out.getvalue()


def print_table(rows: list[Row], keys: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    val = ranking_metric(rows) == "val/loss"
    table = Table(title=f"{title}, ranked by {ranking_metric(rows)}")
    losses = ["train/loss", "val/loss"] if val else ["train/loss"]
    error = error_column(rows)
    for column in ["#", *keys, *losses, error, "status", "run id"]:
        table.add_column(column, justify="right" if column not in ("status", "run id") else "left")
    for rank, row in enumerate(rows, start=1):
        status = row.status if not row.failure else f"{row.status}: {row.failure[:60]}"
        loss_cells = [_cell(row, "train/loss", row.loss)]
        loss_cells += [_cell(row, "val/loss", row.val_loss)] if val else []
        table.add_row(
            str(rank), *(row.params.get(k, "") for k in keys),
            *loss_cells, _cell(row, error, _error(row, error), ".2e"), status, row.run_id,
        )  # fmt: skip
    Console(highlight=False, width=200).print(table)


def to_markdown(rows: list[Row], keys: list[str], title: str) -> str:
    """The comparison as a markdown table (the parent run's description in the UI)."""
    val = ranking_metric(rows) == "val/loss"
    losses = ["train/loss", "val/loss"] if val else ["train/loss"]
    error = error_column(rows)
    lines = [f"**{title}**, ranked by {ranking_metric(rows)}", "",
             "| # | " + " | ".join([*keys, *losses, error, "status", "run"]) + " |",
             "|" + "---|" * (len(keys) + len(losses) + 4)]  # fmt: skip
    for rank, row in enumerate(rows, start=1):
        loss_cells = [_cell(row, "train/loss", row.loss)]
        loss_cells += [_cell(row, "val/loss", row.val_loss)] if val else []
        cells = [str(rank), *(row.params.get(k, "") for k in keys), *loss_cells,
                 _cell(row, error, _error(row, error), ".2e"), row.status, row.run_id]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], keys: list[str]):
    """The sweep's picture of its ranking metric over what was swept: (figure, file name)."""
    return sweep_plot.draw(rows, keys, ranking_metric(rows))


def compare(
    client: MlflowClient, parent: Run, *, log: bool, show: bool = True, plots: bool = True
) -> list[Row]:
    rows = rows_of(children(client, parent))
    # What was swept: the values that differ, or (one job ran: nothing differs) the keys the
    # sweep's command swept, so its column is there either way.
    varied = varied_keys(rows) or [
        k for k in swept_keys(parent) if any(k in r.params for r in rows)
    ]
    shown, keys = replicates(rows, varied)  # configurations where seeds repeat
    if show:
        print_table(shown, keys, f"{parent.info.run_name} ({parent.info.run_id}): best first")
    if not log or not rows:
        return rows
    run_id = parent.info.run_id
    records.log_text(client, run_id, to_csv(shown, keys), "comparison.csv")
    # The parent's description in the UI: the comparison, readable without opening a file.
    note = to_markdown(shown, keys, parent.info.run_name or "the sweep")[:20000]
    client.set_tag(run_id, "mlflow.note.content", note)
    try:
        fig, name = plot(shown, keys)
        if fig is not None:
            client.log_figure(parent.info.run_id, fig, name)
    except Exception as error:  # the comparison table and CSV are logged; a picture is extra
        log.warning("could not plot the sweep's comparison: %s", error)
    if plots:  # every job's loss curve, in place of a PNG per job (plots_per_job)
        try:
            _log_losses(client, run_id, rows[:_LOSS_CURVES])
        except Exception as error:
            log.warning("could not plot the sweep's loss curves: %s", error)
    best = shown[0]  # the best run, or the best configuration's mean over its replicates
    if best.status == FINISHED:
        now = int(time.time() * 1000)
        best_metrics = {"best/train_loss": best.loss, "best/error_w_l2": best.w_l2}
        if math.isfinite(best.val_loss):
            best_metrics["best/val_loss"] = best.val_loss
        tags = [("linreg.best_run_id", best.run_id), ("linreg.best_run", best.name)]
        if best.n > 1:  # its best run's id; best/* are the configuration's means over n runs
            best_metrics["best/replicates"] = best.n
            best_metrics.update(
                {
                    f"best/{k.replace('/', '_')}_std": best.std.get(k, math.nan)
                    for k in ("train/loss", "val/loss")
                    if k in best.std
                }
            )
            tags.append(("linreg.best_config", best.name))
        records.log_batch(
            client, run_id,
            metrics=[(key, value, now, 0) for key, value in best_metrics.items()
                     if math.isfinite(value)],
            tags=tags,
        )  # fmt: skip
    return rows


_LOSS_CURVES = 200  # the best jobs' curves in losses.png (a query each; beyond, unreadable)


def _log_losses(client: MlflowClient, run_id: str, rows: list[Row]) -> None:
    histories = {
        row.run_id: [(m.step, m.value) for m in sorted(
            client.get_metric_history(row.run_id, "train/loss"), key=lambda m: m.step)]
        for row in rows
    }  # fmt: skip
    optima = {row.metrics.get("optimum/loss") for row in rows} - {None}
    optimum = optima.pop() if len(optima) == 1 else None  # one dataset: one optimum
    fig, name = sweep_plot.losses(rows, histories, optimum)
    if fig is not None:
        client.log_figure(run_id, fig, name)


def finish_sweep(
    client: MlflowClient,
    parent_run_id: str,
    failure: str | None,
    interrupted: str | None,
    plots: bool = True,
    model_name: str | None = None,
) -> str:
    """Log the comparison on the parent, keep its best model (registered as model_name),
    then end it with the status its children earned."""
    from linreg_lab.tracking.orphans import close_dead_runs

    parent = client.get_run(parent_run_id)
    closed_as = KILLED if interrupted else FAILED
    close_dead_runs(client, children(client, parent), closed_as, "its sweep was stopped")
    rows = compare(client, parent, log=True, plots=plots)
    statuses = {row.status for row in rows} - {PRUNED}  # pruned on purpose: the sweep's own
    if interrupted or KILLED in statuses:
        status = KILLED
    elif failure or not rows or statuses - {FINISHED}:  # (every run pruned: FINISHED)
        status = FAILED
    else:
        status = FINISHED
    if model_name and rows and not interrupted:  # an interrupted sweep's best is not its best
        try:
            keep_best_model(client, client.get_run(parent_run_id), model_name)
        except Exception as error:  # the comparison is logged; the model is extra
            log.warning("could not register the sweep's best model: %s", error)
    reason = failure or (f"interrupted by {interrupted}" if interrupted else None)
    failed = [row for row in rows if row.status not in (FINISHED, PRUNED)]
    if failed and not reason:
        reason = f"{len(failed)} of {len(rows)} runs did not finish"
    records.end_run(client, parent_run_id, status, reason)
    print(f"MLflow parent run {parent_run_id} ended {status}" + (f": {reason}" if reason else ""))
    return status


BEST_ALIAS = "best"


def keep_best_model(client: MlflowClient, parent: Run, name: str) -> str | None:
    """The sweep's best model (its best configuration's best run: linreg.best_run_id): logged
    on that run if it has none, registered as a new version of `name`, and the alias @best
    moved to it when it beats the current @best on the same ranking metric and the same data
    (or there is none). Says what it did on the console and in the parent's description;
    the version's tags say what it was compared on. Returns the version's number."""
    import json
    import tempfile

    from linreg_lab.tracking.model import (
        MODULE_ARTIFACT,
        TAG_MODEL_URI,
        log_model,
        model_spec,
        store_of,
    )

    best_run_id = parent.data.tags.get("linreg.best_run_id")
    if not best_run_id:
        return None  # no run finished
    metric = "val/loss" if "best/val_loss" in parent.data.metrics else "train/loss"
    value = parent.data.metrics[f"best/{metric.replace('/', '_')}"]
    best = client.get_run(best_run_id)
    uri = best.data.tags.get(TAG_MODEL_URI)
    if uri is None:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(best_run_id, "parameters.json", folder)
            report = json.loads(open(path).read())
        spec = model_spec(report)
        if spec is None:  # a model of the user's own whose run stored no module
            print(
                f"Best model: run {best_run_id} stored no model ({MODULE_ARTIFACT}): not registered"
            )
            return None
        uri = log_model(client, best_run_id, spec)
    data = best.data.tags.get(TAG_DATA_KEY, "")
    try:
        client.get_registered_model(name)
    except Exception:  # none yet (RESOURCE_DOES_NOT_EXIST)
        try:
            client.create_registered_model(name, description="linreg-lab sweeps' best models")
        except Exception:  # another sweep made it meanwhile (RESOURCE_ALREADY_EXISTS)
            client.get_registered_model(name)
    tags = {"linreg.metric": metric, "linreg.value": repr(value), "linreg.data_key": data,
            "linreg.sweep_run_id": parent.info.run_id}  # fmt: skip
    with store_of(client):  # its models:/ source is looked up in the global store
        version = client.create_model_version(name, uri, run_id=best_run_id, tags=tags)
    try:
        current = client.get_model_version_by_alias(name, BEST_ALIAS)
    except Exception:
        current = None
    said = f"models:/{name}/{version.version}"
    if current is None:
        move, why = True, "the first"
    elif (current.tags.get("linreg.metric"), current.tags.get("linreg.data_key")) != (metric, data):
        move, why = False, (f"@best stays on version {current.version}: not comparable (another "
                            "ranking metric or other data; register under another "
                            "tracking.registered_model_name)")  # fmt: skip
    else:
        theirs = float(current.tags.get("linreg.value", "inf"))
        move = value < theirs
        why = (f"better than version {current.version} ({metric} {theirs:.4e}) on the same data"
               if move else f"@best stays on version {current.version}: its {metric} "
               f"{theirs:.4e} is not worse, on the same data")  # fmt: skip
    if move:
        client.set_registered_model_alias(name, BEST_ALIAS, version.version)
        line = f"Best model: {said} ({metric} {value:.4e}), now models:/{name}@{BEST_ALIAS}: {why}"
    else:
        line = f"Best model: {said} ({metric} {value:.4e}); {why}"
    print(line, flush=True)
    note = parent.data.tags.get("mlflow.note.content", "")
    client.set_tag(parent.info.run_id, "mlflow.note.content", f"{note}\n\n{line}"[:20000])
    client.set_tag(parent.info.run_id, "linreg.best_model", said)
    return version.version
