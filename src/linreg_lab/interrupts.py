"""Signals as exceptions: a run stopped by SIGINT or SIGTERM ends KILLED, exit 128 + signal."""

from __future__ import annotations

import signal
from contextlib import contextmanager

# Runs open in this process: a signal must unwind them, each to end KILLED.
_runs_open = 0


class Interrupted(BaseException):
    """SIGTERM arrived (SIGINT arrives as KeyboardInterrupt): stop now, end the run KILLED."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, Interrupted):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return 1


@contextmanager
def run_open():
    """Mark a run of this process as open while the block runs."""
    global _runs_open
    _runs_open += 1
    try:
        yield
    finally:
        _runs_open -= 1


def runs_open() -> bool:
    """True while a run of this process is open (a sweep's job may run in its process)."""
    return _runs_open > 0
