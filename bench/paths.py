"""The analytic engine's two CPU paths, one epoch each: the evidence for its choice of path."""

from __future__ import annotations

import time

import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.engines import analytic
from linreg_lab.engines.orders import batch_orders


def epoch_seconds(data, batch_size: int, blas: bool, threads: int) -> float:
    torch.set_num_threads(threads)
    try:
        hyper = analytic.SGDHyper(lr=0.001)
        theta = torch.zeros(data.num_features + 1)
        order = next(batch_orders(data.num_samples, 1, True, torch.Generator().manual_seed(0)))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            analytic.train_analytic(
                theta,
                hyper,
                data.X,
                data.y,
                [order],
                batch_size,
                lambda *_: None,
                1,
                compiled="false" if blas else "true",
            )
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        torch.set_num_threads(1)


def measure(shapes: list[tuple[int, int, int]]) -> list[dict]:
    rows = []
    for num_samples, num_features, batch_size in shapes:
        data = make_synthetic_regression(num_samples=num_samples, num_features=num_features)
        compiled = epoch_seconds(data, batch_size, blas=False, threads=1)
        blas = {t: epoch_seconds(data, batch_size, blas=True, threads=t) for t in (1, 2)}
        rows.append(
            {
                "N": num_samples, "D": num_features, "batch": batch_size,
                "compiled_s": compiled, "blas_1_thread_s": blas[1], "blas_2_threads_s": blas[2],
                "x_best_blas": min(blas.values()) / compiled,
            }
        )  # fmt: skip
    return rows
