"""Work made on threads while the caller goes on.

Ahead: one item ahead, an iterator's next item made on a thread while the caller works on
this one. The streamed table's row groups (streamed.ReadAhead: each decoded while the one
before is packed) and the data-parallel ranks' next order or window (engines.distributed) are
read this way. The first item is started when an Ahead is made, not when it is first asked for.

in_order: a pass's pieces (a streamed table's row groups, a table's chunks of rows) summed on
several threads, each piece's result given in the pieces' order, so that adding them up gives
the same bits on any number of threads.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
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


def in_order(work: Callable, items: Sequence, threads: int) -> Iterator:
    """work(item) of each of items, made on up to threads threads (one item each at a time,
    at most twice threads made ahead of the caller: a result is let go once given), BLAS on
    one thread while they run (its own threads spin against ours: numpy's two took twice the
    CPU of one, for a slower pass), given in items' order. Close it (or let an error end it):
    the items not started are cancelled, the running ones waited for. The limit on BLAS is
    the process's until then: the caller does no BLAS work of its own between items, and
    makes one pass at a time. One item: made here, on this thread, BLAS as it is."""
    if len(items) == 1:
        yield work(items[0])
        return
    from threadpoolctl import threadpool_limits

    threads = max(1, min(threads, len(items)))
    pool = ThreadPoolExecutor(threads, thread_name_prefix="linreg-pass")
    coming: collections.deque = collections.deque()
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            for item in items:
                coming.append(pool.submit(work, item))
                if len(coming) >= 2 * threads:
                    yield coming.popleft().result()
            while coming:
                yield coming.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _lowest_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
