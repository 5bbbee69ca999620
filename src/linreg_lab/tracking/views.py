"""The runs table a printed link opens on: an MLflow saved view, written as an experiment tag.

MLflow 3.15+ keeps a saved view of an experiment's runs table as the experiment tag
`mlflow.sharedViewState.<key>`, opened by the URL query `?viewStateShareKey=<key>`. Its format
is not documented; read in the UI bundle of the pinned MLflow (3.17): a JSON envelope
{name, createdAt, updatedAt, state}, `state` the JSON of the table's state, of which the UI
takes `selectedColumns` (keys such as params.`optimizer.lr`, metrics.`train/loss`),
`orderByKey` and `orderByAsc` here. Only this module knows it; the browser test in
tests/test_ui.py fails when the pinned MLflow reads it otherwise.

The view sorts by end time, newest first: runs show flat, a sweep's parent and then its
children, with no row to expand (MLflow's default start-time order nests a sweep's children
under their collapsed parent). The link also names the machine-learning view
(`workflowType=machine_learning`): MLflow 3.17 opens on its GenAI view by default.
"""

from __future__ import annotations

import json
import time

SHARE_KEY = "linreg"
TAG = "mlflow.sharedViewState." + SHARE_KEY
ML_VIEW = "workflowType=machine_learning"
DEFAULT_PARAMS = ("optimizer.lr", "trainer.batch_size")
METRICS = ("train/loss", "val/loss", "test/loss", "error/w_l2", "error/lsq_l2")
_SWEEP_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(")


def query() -> str:
    """The URL query (after the '#/experiments/<id>/runs?') that opens the saved view."""
    return f"viewStateShareKey={SHARE_KEY}&{ML_VIEW}"


def swept_keys(parent_params: dict[str, str]) -> list[str]:
    """The keys a sweep's parent run says were swept (its sweep.override.* and sweep.params.*
    params), in their order."""
    keys = []
    for name, value in parent_params.items():
        if name.startswith("sweep.params."):
            keys.append(name.removeprefix("sweep.params."))
        elif name.startswith("sweep.override."):
            key, _, values = value.partition("=")
            key = key.lstrip("+~")
            if key.startswith(("hydra", "experiment")):
                continue
            if values.startswith(_SWEEP_FUNCTIONS) or ("," in values and values[:1] not in "[{"):
                keys.append(key)
    return list(dict.fromkeys(keys))


def columns(params: list[str] | None, run_metrics: set[str]) -> list[str]:
    """The runs table's columns: the dataset, params (a sweep's swept keys, else the usual
    two), then those of train/loss, val/loss, test/loss and the errors that the runs have."""
    metrics = [m for m in METRICS if m in run_metrics] or ["train/loss", "error/w_l2"]
    if "error/w_l2" in metrics:  # the truth is known: the distance to it says enough
        metrics = [m for m in metrics if m != "error/lsq_l2"]
    return [
        _column("attributes", "Dataset"),  # which data: the tutorial's, diabetes, a table
        *(_column("params", key) for key in params or DEFAULT_PARAMS),
        *(_column("metrics", metric) for metric in metrics),
    ]


def tag_value(selected: list[str], name: str = "linreg-lab: loss and swept settings") -> str:
    """The experiment tag's value for a view showing the selected columns."""
    state = {
        "selectedColumns": selected,
        "orderByKey": "attributes.end_time",
        "orderByAsc": False,
    }
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return json.dumps(envelope)


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"
