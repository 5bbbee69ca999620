"""How the loop runs: epochs, batches, order, seed, device, engine."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch

ENGINES = ("auto", "analytic", "autograd")
DEVICES = ("auto", "cpu", "cuda")
# From here torch.randperm misses the cache on every swap (0.6 s at 10^7, as long as an epoch);
# shuffle.permutation stays in cache (~0.1 s). Below, randperm is as fast and needs no numba.
_CACHED_SHUFFLE_MIN_SAMPLES = 1 << 16
# seeded_orders keeps the orders of small runs (at most this many int64 entries each, 1 MB) for
# a few seeds: repeated fits with one seed (an lr sweep, a benchmark) draw them once.
_KEPT_ORDERS_MAX_ENTRIES = 1 << 17
_KEPT_ORDERS_RUNS = 16
# torch's thread count when this process started (cores, or OMP_NUM_THREADS): runs set torch's
# count, so a large run after a small one in the same sweep must not read it back.
_STARTING_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class TrainerSettings:
    epochs: int = 3
    batch_size: int = 10
    shuffle: bool = True
    seed: int = 42
    device: str = "auto"
    engine: str = "auto"
    threads: str | int = "auto"

    def __post_init__(self) -> None:
        # Enum members from the typed config arrive here; keep plain strings.
        object.__setattr__(self, "device", str(getattr(self.device, "value", self.device)))
        object.__setattr__(self, "engine", str(getattr(self.engine, "value", self.engine)))

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def num_threads(self, num_samples: int, num_features: int) -> int:
        """One thread for small problems: a second thread only adds contention on shared cores."""
        if self.threads != "auto":
            return int(self.threads)
        large = num_samples * num_features >= 1 << 22
        return _STARTING_THREADS if large else 1


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
            from linreg_lab.training.shuffle import permutation

            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            # torch's thread count is the run's (trainer.threads); the order does not depend on it
            yield torch.from_numpy(permutation(num_samples, seed, torch.get_num_threads()))


def seeded_orders(
    num_samples: int, epochs: int, shuffle: bool, seed: int
) -> Iterable[torch.Tensor]:
    """batch_orders with a generator freshly seeded from seed: the same orders, every time.

    Small runs get a cached tuple, shared between calls: callers must not write to the orders.
    """
    if num_samples * epochs <= _KEPT_ORDERS_MAX_ENTRIES:
        return _kept_orders(num_samples, epochs, shuffle, seed)
    return batch_orders(num_samples, epochs, shuffle, torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=_KEPT_ORDERS_RUNS)
def _kept_orders(num_samples: int, epochs: int, shuffle: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return tuple(batch_orders(num_samples, epochs, shuffle, generator))
