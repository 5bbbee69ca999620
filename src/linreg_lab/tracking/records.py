"""The writes of one run, in MLflow's terms: each takes an MlflowClient first, plain arguments
after, and runs in the MLflow helper process (the training process never imports mlflow)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from linreg_lab.tracking.tags import TAG_FAILURE

_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000  # metrics, params and tags of one call together (MLflow's limit)


def create_run(
    client, experiment_id: str, run_name: str, tags: dict[str, str], start_time: int
) -> str:
    """Create the run (started at start_time, ms); returns its id."""
    run = client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)
    return run.info.run_id


def log_batch(
    client,
    run_id: str,
    metrics: Sequence[tuple[str, float, int, int]] = (),
    params: Sequence[tuple[str, str]] = (),
    tags: Sequence[tuple[str, str]] = (),
) -> None:
    """metrics as (key, value, timestamp ms, step), params and tags, in as few of MLflow's
    log_batch calls (one transaction each) as its limits allow: one for a tutorial-size run."""
    from mlflow.entities import Metric, Param, RunTag

    params, tags = [Param(k, v) for k, v in params], [RunTag(k, v) for k, v in tags]
    metrics = [Metric(*m) for m in metrics]
    while params or tags or metrics:
        some_params, params = params[:_MAX_PARAMS_PER_BATCH], params[_MAX_PARAMS_PER_BATCH:]
        some_tags, tags = tags[:_MAX_TAGS_PER_BATCH], tags[_MAX_TAGS_PER_BATCH:]
        room = MAX_ENTITIES_PER_BATCH - len(some_params) - len(some_tags)
        some_metrics, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=some_metrics, params=some_params, tags=some_tags)


def log_text(client, run_id: str, text: str, artifact_file: str) -> None:
    client.log_text(run_id, text, artifact_file)


def log_bytes(client, run_id: str, png: bytes, artifact_file: str) -> None:
    """A file made in memory (a PNG, a saved module), stored as the run's artifact_file."""
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, os.path.basename(artifact_file))
        with open(local, "wb") as file:
            file.write(png)
        client.log_artifact(run_id, local, os.path.dirname(artifact_file) or None)


def end_run(client, run_id: str, status: str, failure: str | None = None) -> None:
    """End the run with status; a failure reason becomes the linreg.failure tag."""
    try:
        if failure:
            client.set_tag(run_id, TAG_FAILURE, failure[:5000])
    finally:
        client.set_terminated(run_id, status=status)


def announce(client, line: str, run_id: str, logs: Sequence[str] = ()) -> None:
    """Print line with {run_id} replaced: from the helper, which knows the id once it exists;
    also appended to the log files named (the job's own, which its console line belongs to)."""
    line = line.replace("{run_id}", run_id)
    print(line, flush=True)
    for path in logs:
        try:
            with open(path, "a") as log:  # a line appended whole, beside the job's own writes
                log.write(line + "\n")
        except OSError:
            pass  # the console has the line: a log that cannot be written loses only its copy
