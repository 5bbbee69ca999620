"""Load numba and the shuffle's machine code in a background thread while the data is made.

A large run needs the compiled shuffle, whose first call costs ~0.8 s (importing numba and
building its CPU target) with one core idle: making the data spends its time in torch's
random number generator, which releases the GIL. Started beside it, the load is done first.
"""

from __future__ import annotations

import logging
import threading

from linreg_lab.training.settings import uses_compiled_shuffle

log = logging.getLogger(__name__)


def _load() -> None:
    try:
        from linreg_lab.training.shuffle import permutation

        permutation(1 << 10, 0, threads=1)
    except Exception as error:  # the training's own call reports any real failure
        log.debug("preloading the compiled shuffle failed: %s", error)


def compiled_shuffle_in_background(num_samples: int, shuffle: bool) -> threading.Thread | None:
    """Start loading the compiled shuffle if this run will use it; the thread, or None."""
    if not uses_compiled_shuffle(num_samples, shuffle):
        return None
    thread = threading.Thread(target=_load, name="linreg-preload", daemon=True)
    thread.start()
    return thread
