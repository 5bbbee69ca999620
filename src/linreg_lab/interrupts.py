"""Signals as exceptions: a run stopped by SIGINT or SIGTERM ends KILLED, exit 128 + signal."""

from __future__ import annotations

import signal


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
