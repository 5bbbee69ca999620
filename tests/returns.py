"""A Hydra callback for tests: each job's return value (what a sweeper such as Optuna is
given), appended to a JSON-lines file. Hydra calls on_job_end in the job's own process."""

from __future__ import annotations

import json

from hydra.experimental.callback import Callback


class RecordReturns(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_job_end(self, config, job_return, **kwargs) -> None:
        with open(self.path, "a") as returns:
            overrides = list(job_return.overrides or [])
            returns.write(json.dumps([overrides, job_return.return_value]) + "\n")
