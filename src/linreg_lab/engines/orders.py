"""The sample order of each epoch, shared by every engine: the same seed, the same batches."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

# From here torch.randperm misses the cache on every swap (0.6 s at 10^7, as long as an epoch);
# kernels.permutation stays in cache (~0.1 s). Below, randperm is as fast and needs no numba.
_CACHED_SHUFFLE_MIN_SAMPLES = 1 << 16
# seeded_orders keeps the orders of small runs (at most this many int64 entries each, 1 MB) for
# a few seeds: fits repeated with one seed (a learning-rate sweep's jobs in one process, a
# benchmark) draw them once. A 3-epoch fit at N 1000 takes ~0.1 ms; drawing its orders ~0.05.
_KEPT_ORDERS_MAX_ENTRIES = 1 << 17
_KEPT_ORDERS_RUNS = 16


def uses_compiled_shuffle(num_samples: int, shuffle: bool) -> bool:
    return shuffle and num_samples >= _CACHED_SHUFFLE_MIN_SAMPLES


def batch_orders(num_samples: int, epochs: int, shuffle: bool, generator: torch.Generator):
    """The sample order of each epoch: a fresh permutation, as DataLoader(shuffle=True) draws.

    Both engines take their order from here, so the same seed gives them the same batches.
    """
    for _ in range(epochs):
        if not shuffle:
            yield torch.arange(num_samples)
        elif not uses_compiled_shuffle(num_samples, shuffle):
            yield torch.randperm(num_samples, generator=generator)
        else:
            from linreg_lab.engines.analytic import kernels

            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            # torch's thread count is the run's (trainer.threads); the order does not depend on it
            yield torch.from_numpy(
                kernels().permutation(num_samples, seed, torch.get_num_threads())
            )


def seeded_orders(num_samples: int, epochs: int, shuffle: bool, seed: int) -> Iterable:
    """batch_orders with a generator freshly seeded from seed: the same orders, every time.

    Small runs get a kept tuple, shared between calls: callers must not write to the orders.
    """
    if num_samples * epochs <= _KEPT_ORDERS_MAX_ENTRIES:
        return _kept_orders(num_samples, epochs, shuffle, seed)
    return batch_orders(num_samples, epochs, shuffle, torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=_KEPT_ORDERS_RUNS)
def _kept_orders(num_samples: int, epochs: int, shuffle: bool, seed: int) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    return tuple(batch_orders(num_samples, epochs, shuffle, generator))
