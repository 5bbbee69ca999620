"""One item ahead: an iterator's next item made on a thread while the caller works on this one.

The streamed table's row groups (streamed.ReadAhead: each decoded while the one before is
packed) and the data-parallel ranks' next order or window (engines.distributed) are read this
way. The first item is started when an Ahead is made, not when it is first asked for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

_END = object()


class Ahead:
    """items, each made on a thread of its own while the caller works on the one before.
    Iterate it once, then close it (or use it as a context manager): the thread ends, and so
    does items (a generator) if it can be closed.

    lowest: the thread at the lowest CPU priority, so that it runs in the time its core would
    idle (a rank waiting on the others in each step's reduction). Threads inherit their
    creator's priority: numba's pool is started first, here, so it does not start at the
    lowest."""

    def __init__(self, items: Iterator, lowest: bool = False):
        if lowest:
            from linreg_lab.engines.analytic import kernels

            kernels().start_threads()
        self._items = items
        self._pool = ThreadPoolExecutor(1, initializer=_lowest_priority if lowest else None)
        self._coming = self._pool.submit(next, items, _END)

    def __iter__(self) -> Iterator:
        while (item := self._coming.result()) is not _END:
            self._coming = self._pool.submit(next, self._items, _END)
            yield item

    def close(self) -> None:
        self._coming.cancel()  # not started yet: never; else its item is made, then it ends
        self._pool.shutdown(wait=True)
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lowest_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
