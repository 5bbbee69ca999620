"""One MLflow run: created, filled in batches, and always ended with a status."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from linreg_lab.tracking.tags import TAG_FAILURE, TAG_HOST, TAG_PID, TAG_SWEEP  # noqa: F401

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


class RunRecorder:
    """Writes one run; metrics are buffered and flushed at most every flush_seconds."""

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 1.0):
        self.client, self.run_id = client, run_id
        self._pending: list[Metric] = []
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        flush_seconds: float = 1.0,
    ) -> RunRecorder:
        tags = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname(), **tags}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
        return cls(client, run.info.run_id, flush_seconds)

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            batch = self._pending[:_MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._pending[: len(batch)]
        self._last_flush = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, data: object, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2), artifact_file)

    def end(self, status: str, failure: str | None = None) -> None:
        """Flush what is pending, then end the run; a failure reason becomes a tag."""
        try:
            self.flush()
            if failure:
                self.set_tags({TAG_FAILURE: failure[:5000]})
        finally:
            self.client.set_terminated(self.run_id, status=status)


FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
KILLED = RunStatus.to_string(RunStatus.KILLED)
