"""A store and its runs as the training process sees them: every write goes to the helper."""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence

from linreg_lab.tracking.helper import Handle, helper
from linreg_lab.tracking.records import MAX_ENTITIES_PER_BATCH
from linreg_lab.tracking.store import TrackingSettings
from linreg_lab.tracking.tags import TAG_HOST, TAG_PID, TAG_SLURM_JOB, TAG_USER, slurm_job_id

_PARAM_LIMIT = 6000  # MLflow's longest param value
_CUT = " ... (cut at MLflow's limit; the whole value is in config.yaml)"


def _fitted(value: str) -> str:
    return value if len(value) <= _PARAM_LIMIT else value[: _PARAM_LIMIT - len(_CUT)] + _CUT


class Store:
    """One tracking store and experiment. Cheap to make: it holds settings and ids or handles."""

    def __init__(self, settings: TrackingSettings, experiment: str | Handle):
        self.settings = settings
        self._experiment = experiment

    @classmethod
    def open(cls, settings: TrackingSettings, experiment_id: str | None = None) -> Store:
        """The store and its experiment (created if missing), opened in the helper while the
        caller goes on; a failure surfaces at check(). With experiment_id: one opened before."""
        if experiment_id is not None:
            helper()  # start this process's helper now: its imports overlap the caller's
            return cls(settings, experiment_id)
        handle = helper().new_handle()
        helper().post("open_experiment", settings, settings, binds=handle)
        # Runs a dead process left RUNNING on this host are marked FAILED (see orphans.py).
        helper().post("fail_orphans", settings, handle)
        return cls(settings, handle)

    @property
    def experiment_id(self) -> str:
        """The experiment's id (waits for the helper to have opened it)."""
        return self.resolve(self._experiment)

    def start_run(
        self,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | Handle | None = None,
        flush_seconds: float = 1.0,
    ) -> Run:
        """Post the run's creation; the run is returned at once."""
        tags = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname(), **tags}
        if slurm_job := slurm_job_id():
            tags[TAG_SLURM_JOB], tags[TAG_USER] = slurm_job, getpass.getuser()
        if parent_run_id is not None:
            tags["mlflow.parentRunId"] = parent_run_id
        handle = helper().new_handle()
        started = int(time.time() * 1000)
        helper().post(
            "create_run", self.settings, self._experiment, run_name, tags, started, binds=handle
        )
        return Run(self, handle, flush_seconds)

    def announce(self, line: str, run: Run | str, logs: Sequence[str] = ()) -> None:
        """Print line, with {run_id} as the run's id, once the helper has written what is
        before; also appended to the log files `logs`."""
        helper().post("announce", None, line, run.handle if isinstance(run, Run) else run,
                      list(logs))  # fmt: skip

    def finish_sweep(self, parent_run_id: str, failure: str | None, interrupted: str | None):
        """Compare a sweep's children on its parent, then end the parent (waits)."""
        return helper().call("finish_sweep", self.settings, parent_run_id, failure, interrupted,
                             self.settings.log_plots, self.settings.model_name)  # fmt: skip

    def finished_jobs(self) -> dict[str, list]:
        """job key -> [run id, objective] of the experiment's FINISHED runs (waits)."""
        return helper().call("finished_jobs", self.settings, self._experiment)

    def check(self) -> None:
        """Raise the first failure of a write posted so far (TrackingError: the user's)."""
        helper().check()

    def sync(self) -> None:
        """Wait until everything posted is written; raise the first failure."""
        helper().call("sync", None)

    def resolve(self, value: str | Handle) -> str:
        """The id a Handle stands for (waits for the helper to have made it); ids pass as is."""
        return helper().call("resolve", None, value) if isinstance(value, Handle) else value


class Run:
    """One run: params, metrics (buffered, posted at most every flush_seconds, counted from the
    first: a run created long before it trains, a vectorized group's, posts no sooner), artifacts,
    end."""

    def __init__(self, store: Store, handle: Handle, flush_seconds: float = 1.0):
        self.store, self.handle = store, handle
        self._id: str | None = None
        self._pending: list[tuple[str, float, int, int]] = []
        self._end_tags: dict[str, str] = {}  # sent with the run's last metrics
        self._flush_seconds = flush_seconds
        self._last_flush: float | None = None  # the clock starts at the first metric
        self._in_flight: int | None = None  # the marker after this run's last batch (helper)
        self.has_ended = False

    @property
    def id(self) -> str:
        """The run's MLflow id (waits until the helper has created the run)."""
        if self._id is None:
            self._id = self.store.resolve(self.handle)
        return self._id

    def _post(self, verb: str, *args) -> None:
        helper().post(verb, self.store.settings, self.handle, *args)

    def log_params(self, params: Mapping[str, object]) -> None:
        """Params as strings; one beyond MLflow's 6000 characters is cut, and says so."""
        self._post("log_batch", [], [(k, _fitted(str(v))) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self._post("log_batch", [], [], [(k, str(v)) for k, v in tags.items()])

    def tag_at_end(self, tags: Mapping[str, object]) -> None:
        """Tags written with the run's last metrics, as it ends (one write less)."""
        self._end_tags.update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending.extend((k, float(v), now, step) for k, v in metrics.items())
        if self._last_flush is None:
            self._last_flush = time.monotonic()
        elif (time.monotonic() - self._last_flush >= self._flush_seconds
              or len(self._pending) >= MAX_ENTITIES_PER_BATCH):  # fmt: skip
            self.flush()

    def flush(self) -> None:
        """Post the pending metrics; raise the first write that failed since (TrackingError):
        a run whose records cannot be written stops, as a dead server or full disk means.

        Training never runs more than one batch ahead of the store: a run that logs faster
        than the store writes waits here for its batch before (a marker after it, answered
        by the helper: no wait when the helper keeps up), and a batch is at most one of
        MLflow's log_batch calls (log_metrics flushes at 1,000 values), so Ctrl-C never
        waits on a backlog (~0.1 s a batch on sqlite)."""
        if self._pending:
            if self._in_flight is not None:  # this run's batch before: written by now?
                helper().wait_for(self._in_flight)
            self._post("log_batch", self._pending)
            self._pending = []
            self._in_flight = helper().mark()
        self._last_flush = time.monotonic()
        helper().check()

    def log_text(self, text: str, artifact_file: str) -> None:
        self._post("log_text", text, artifact_file)

    def log_json(self, data: object, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2), artifact_file)

    def log_dataset(self, spec: Mapping[str, object], facts) -> None:
        """The data the run trained on (tracking.dataset.DataFacts) as its dataset input."""
        self._post("log_dataset", dict(spec), facts)

    def log_images(self, images: Mapping[str, bytes]) -> None:
        """PNG images drawn by the caller, by artifact path."""
        for path, png in images.items():
            self._post("log_bytes", png, path)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """A file made in memory (a saved module) as the run's artifact_file."""
        self._post("log_bytes", data, artifact_file)

    def log_model(self, spec: dict) -> None:
        """The run's model as a user uses it (tracking.model.model_spec), written by the helper."""
        self._post("log_model", spec)

    def log_plots(self, inputs) -> None:
        """The run's loss and parameter plots (tracking.plots.PlotInputs), drawn by the helper."""
        self._post("log_plots", inputs)

    def end(self, status: str, failure: str | None = None) -> None:
        """Post what is pending, then the run's end; a failure reason becomes a tag.

        A run ends once: a later end (Ctrl-C after a group member diverged) keeps the first.
        """
        if self.has_ended:
            return
        self.has_ended = True
        try:
            if self._end_tags:
                self._post("log_batch", self._pending, [], list(self._end_tags.items()))
                self._pending, self._end_tags = [], {}
            self.flush()
        finally:
            self._post("end_run", status, failure)
