"""linreg-report: the comparison table of a past sweep or experiment, read back from MLflow.

linreg-report                          # the latest sweep
linreg-report --run <parent run id>    # a given sweep
linreg-report --experiment linreg      # every run of an experiment
"""

from __future__ import annotations

import argparse
import os
import sys

from linreg_lab.paths import DEFAULT_TRACKING_URI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="linreg-report", description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--run", help="a sweep's parent run id (default: the latest sweep)")
    target.add_argument("--experiment", help="show every run of this MLflow experiment")
    parser.add_argument(
        "--uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="tracking URI (default: $MLFLOW_TRACKING_URI or the project store)",
    )
    parser.add_argument(
        "--csv",
        action="store_true",
        help="print CSV instead of a table: every param and metric of every run",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from linreg_lab.config.errors import exit_on_user_error
    from linreg_lab.tracking import report
    from linreg_lab.tracking.store import TrackingError
    from linreg_lab.tracking.tags import TAG_SWEEP

    with exit_on_user_error("linreg-report"):
        client = _open(args.uri)
        if args.experiment:
            experiment = client.get_experiment_by_name(args.experiment)
            if experiment is None:
                names = ", ".join(e.name for e in client.search_experiments())
                raise TrackingError(
                    f"--experiment={args.experiment}: not found; there are: {names}"
                )
            runs = client.search_runs([experiment.experiment_id], max_results=50000)
            runs = [run for run in runs if run.data.tags.get(TAG_SWEEP) != "true"]
            rows, title = report.rows_of(runs), f"experiment {args.experiment}: best first"
        else:
            parent = _run(client, args.run) if args.run else report.latest_sweep(client)
            if parent is None:
                raise TrackingError(f"--uri={args.uri}: no sweep found; run linreg-train -m")
            if parent.data.tags.get(TAG_SWEEP) != "true":
                raise TrackingError(
                    f"--run={args.run}: not a sweep's parent run; --experiment NAME lists every "
                    "run of an experiment"
                )
            rows = report.rows_of(report.children(client, parent))
            title = (
                f"{parent.info.run_name} ({parent.info.run_id}, {parent.info.status}): best first"
            )
        keys = report.varied_keys(rows)
        if args.csv:  # every run, replicates too
            sys.stdout.write(report.to_full_csv(rows))
        else:  # a configuration per row where seeds were replicated: mean ± std (n)
            report.print_table(*report.replicates(rows, keys), title)


def _open(uri: str):
    """The client of an existing store: reading one must not create it (an sqlite file would)."""
    from pathlib import Path

    from linreg_lab.tracking.store import TrackingError, TrackingSettings, open_client

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(
            f"--uri={uri}: no such store (no sqlite file there; linreg-train creates it)"
        )
    try:
        return open_client(TrackingSettings(uri=uri))
    except TrackingError as error:  # it names the setting as linreg-train's
        raise TrackingError(str(error).replace("tracking.uri=", "--uri=")) from None


def _run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    from linreg_lab.tracking.store import TrackingError

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(
            f"--run={run_id}: no such run; linreg-report with no --run shows the latest sweep"
        ) from None


if __name__ == "__main__":
    main()
