"""One MLflow run as the training process writes it: posted to the helper, always ended."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping

from linreg_lab.tracking import writes
from linreg_lab.tracking.service import Store
from linreg_lab.tracking.tags import TAG_FAILURE, TAG_HOST, TAG_PID, TAG_SWEEP  # noqa: F401

# MLflow's RunStatus names, without importing mlflow here.
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"


class RunRecorder:
    """Writes one run; metrics are buffered and posted at most every flush_seconds."""

    def __init__(self, store: Store, run_ref: str, flush_seconds: float = 1.0):
        self.store, self.run_ref = store, run_ref
        self._run_id: str | None = None
        self._pending: list[tuple[str, float, int, int]] = []
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self.has_ended = False

    @classmethod
    def start(
        cls,
        store: Store,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        flush_seconds: float = 1.0,
    ) -> RunRecorder:
        """Post the run's creation; experiment_id and parent_run_id may be references."""
        tags = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname(), **tags}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        ref = store.new_ref()
        started = int(time.time() * 1000)
        store.mark_run_start()
        store.post(writes.create_run, ref, experiment_id, run_name, tags, started)
        return cls(store, ref, flush_seconds)

    @property
    def run_id(self) -> str:
        """The run's MLflow id (waits until the helper has created the run)."""
        if self._run_id is None:
            self._run_id = self.store.resolve(self.run_ref)
        return self._run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [(k, str(v)[:6000]) for k, v in params.items()]
        self.store.post(writes.log_batch, self.run_ref, params=items)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        items = [(k, str(v)) for k, v in tags.items()]
        self.store.post(writes.log_batch, self.run_ref, tags=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending.extend((k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.store.post(writes.log_batch, self.run_ref, metrics=self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.store.post(writes.log_text, self.run_ref, text, artifact_file)

    def log_json(self, data: object, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2), artifact_file)

    def end(self, status: str, failure: str | None = None) -> None:
        """Post what is pending, then the run's end; a failure reason becomes a tag.

        A run ends once: a later end (Ctrl-C after a group member diverged) keeps the first.
        """
        if self.has_ended:
            return
        self.has_ended = True
        try:
            self.flush()
        finally:
            self.store.post(writes.end_run, self.run_ref, status, failure)
