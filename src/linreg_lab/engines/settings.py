"""How the loop runs: epochs, batches, order, seed, device, engine, threads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ENGINES = ("auto", "analytic", "autograd")
DEVICES = ("auto", "cpu", "cuda")
COMPILED = ("auto", "true", "false")
# torch's thread count when this process started (cores, or OMP_NUM_THREADS): runs set torch's
# count, so a large run after a small one in the same sweep must not read it back.
_STARTING_THREADS = torch.get_num_threads()


class EngineError(ValueError):
    """A trainer setting this run cannot honour: one line, exit 2, before any run."""


@dataclass(frozen=True)
class TrainerSettings:
    epochs: int = 3
    batch_size: int = 10
    shuffle: bool = True
    seed: int = 42
    device: str = "auto"
    engine: str = "auto"
    threads: str | int = "auto"
    compiled: str | bool = "auto"
    processes: int = 1  # data-parallel ranks on this machine (engines.distributed)

    def __post_init__(self) -> None:
        # YAML reads true/false as booleans; keep one spelling.
        object.__setattr__(self, "compiled", str(self.compiled).lower())
        object.__setattr__(self, "processes", int(self.processes))

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
