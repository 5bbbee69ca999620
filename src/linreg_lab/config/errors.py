"""User mistakes become one line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from linreg_lab.config.validate import ConfigError
from linreg_lab.data import DataError
from linreg_lab.engines import EngineError
from linreg_lab.tracking.store import TrackingError, mask_secrets

USER_ERRORS = (ConfigError, TrackingError, EngineError, DataError)
EXIT_USER_ERROR = 2
_said: set[str] = set()  # in a sweep: a job's error that also ends it (a dead helper), said once
# In a sweep, a file its processes share: the first error line any of them said. A sweep's own
# error after a job's (a dead server fails both) follows from it and is not said again.
ENV_SAID_FILE = "LINREG_SWEEP_SAID_FILE"


def _first_in_sweep(line: str) -> bool:
    path = os.environ.get(ENV_SAID_FILE)
    if not path:
        return True
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)  # the sweep's folder may not exist yet
        with open(path, "x") as said:  # created by one process only
            said.write(line + "\n")
        return True
    except FileExistsError:
        return False
    except OSError:
        return True


@contextmanager
def exit_on_user_error(program: str = "linreg-train"):
    try:
        yield
    except USER_ERRORS as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        line = " ".join(mask_secrets(error).split())  # one line, whatever the error's text
        in_sweep = os.environ.get(ENV_SAID_FILE) is not None
        if not in_sweep or (line not in _said and _first_in_sweep(line)):
            _said.add(line)
            print(f"{program}: error: {line}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
