"""The synthetic regression problem y = X w + b + noise, with its truth kept beside the data."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

# Rows generated per chunk: bounds the temporary float64-free working set at large N.
_CHUNK_ROWS = 1 << 18


@dataclass(frozen=True)
class RegressionData:
    """Features X (N, D), targets y (N, 1) and the parameters that generated them."""

    X: torch.Tensor
    y: torch.Tensor
    true_w: torch.Tensor  # (D,)
    true_b: float
    noise_std: float
    seed: int

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    @property
    def num_features(self) -> int:
        return self.X.shape[1]

    def to(self, device: torch.device) -> RegressionData:
        if self.X.device == device:
            return self
        X, y = self.X.to(device), self.y.to(device)
        return RegressionData(X, y, self.true_w, self.true_b, self.noise_std, self.seed)


def resolve_true_w(
    true_w: list[float] | None, num_features: int | None, generator: torch.Generator
) -> torch.Tensor:
    """The given weights, or num_features seeded N(0, 1) weights when the two disagree."""
    if num_features is not None and (true_w is None or len(true_w) != num_features):
        if true_w is not None:
            log.info(
                "dataset.num_features=%d differs from len(dataset.true_w)=%d: "
                "drawing a seeded random true_w",
                num_features,
                len(true_w),
            )
        return torch.randn(num_features, generator=generator)
    return torch.tensor(list(true_w), dtype=torch.float32)


def make_synthetic_regression(
    true_w: list[float] | None = (2.8, -1.7, 3.6),
    true_b: float = 3.0,
    num_features: int | None = None,
    num_samples: int = 1000,
    noise_std: float = 0.01,
    seed: int = 0,
) -> RegressionData:
    """Draw X ~ N(0, 1) and y = X true_w + true_b + N(0, noise_std^2), reproducibly from seed."""
    generator = torch.Generator().manual_seed(seed)
    w = resolve_true_w(true_w, num_features, generator)
    # numpy's allocator asks Linux for huge pages on large arrays: shuffled minibatches read rows
    # at random, and 2 MB pages spare a page-table walk per row (~1.5-2x at N 10^6, D 100).
    X = torch.from_numpy(np.empty((num_samples, w.numel()), np.float32))
    y = torch.from_numpy(np.empty((num_samples, 1), np.float32))
    # First touch on torch's threads: this VM faults pages in at ~0.5 GB/s on one thread, and
    # ~2 GB/s on two (N 10^7, D 100: 6-8 s to make the data instead of 11-17 s).
    X.zero_()
    y.zero_()
    # Chunks keep peak memory at the size of X and y, even at 10^7 x 100.
    for start in range(0, num_samples, _CHUNK_ROWS):
        rows = slice(start, min(start + _CHUNK_ROWS, num_samples))
        X_chunk = X[rows]
        X_chunk.normal_(generator=generator)
        y_chunk = y[rows]
        torch.mv(X_chunk, w, out=y_chunk.view(-1))
        y_chunk.add_(torch.randn(y_chunk.shape, generator=generator), alpha=noise_std)
        y_chunk.add_(true_b)
    if not math.isfinite(float(y.abs().max())):
        raise ValueError("dataset: generated targets are not finite; check true_w and true_b")
    return RegressionData(X, y, w, float(true_b), float(noise_std), seed)
