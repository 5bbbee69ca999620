"""Signals set a flag; the code stops where it chose to look.

linreg-train installs record_signals() first thing: from then on SIGINT and SIGTERM only note
their arrival. The training loops call check() between steps (each compiled call is ~10-50 ms),
which raises Interrupted there, so no handler ever cuts a pipe write to the MLflow helper or a
database commit half-way. The run then ends KILLED and the process exits 128 + signal number.

A stop can also be requested from outside the process by a file (stop_when_exists): a sweep's
workers stop when the sweep's process creates it.
"""

from __future__ import annotations

import os
import signal

_received: int | None = None
_stop_file: str | None = None
_hooks: list = []  # called with the signal number after it is recorded (see on_signal)
_reasons: dict[int, str] = {}  # what a signal means where this process runs (see describe)


class Interrupted(BaseException):
    """A stop was requested (SIGINT, SIGTERM, or the sweep's stop file): end the run KILLED."""

    def __init__(self, signum: int = signal.SIGTERM, reason: str | None = None):
        self.signum = int(signum)
        self.reason = (
            reason
            or _reasons.get(self.signum)
            or (f"interrupted by {signal.Signals(self.signum).name}")
        )
        super().__init__(self.signum, self.reason)

    def __str__(self) -> str:
        return self.reason

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _record(signum: int, frame) -> None:
    global _received
    if _received is None:
        _received = signum
        for hook in list(_hooks):
            hook(signum)


def on_signal(hook) -> None:
    """Also call hook(signum) when the first stop is recorded: it must be quick and write no
    pipe or database (creating a file is fine)."""
    _hooks.append(hook)
    if _received is not None:
        hook(_received)


def forget_hooks() -> None:
    _hooks.clear()


def record_signals(*signums: int) -> None:
    """From now on these signals (default SIGINT and SIGTERM) only set the flag (main thread)."""
    for signum in signums or (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _record)


def describe(signum: int, reason: str) -> None:
    """What a run stopped by signum says it was (e.g. in a SLURM job: cancelled, time limit)."""
    _reasons[int(signum)] = reason


def ignore(signum: int) -> None:
    signal.signal(signum, signal.SIG_IGN)


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Set the flag as a signal would (the first request is the one reported)."""
    _record(signum, None)


def stop_when_exists(path: str | None) -> None:
    """check() also stops once path exists (None: no such file)."""
    global _stop_file
    _stop_file = path


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def received() -> int | None:
    """The first signal recorded, or None."""
    return _received


def stop_requested() -> bool:
    return _received is not None or (_stop_file is not None and os.path.exists(_stop_file))


def check() -> None:
    """Raise Interrupted if a stop was requested: called between steps, where stopping is safe."""
    if _received is not None:
        raise Interrupted(_received)
    if _stop_file is not None and os.path.exists(_stop_file):
        raise Interrupted(signal.SIGTERM, "interrupted: its sweep was stopped")


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, Interrupted):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return 1
