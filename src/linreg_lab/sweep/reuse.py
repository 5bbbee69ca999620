"""The last dataset and its least-squares optimum, kept by a sweep for its next job.

A sweep's jobs usually share their dataset config (a learning-rate or batch-size sweep), and a
launcher runs them one after another in one process (the basic and vectorized launchers; each
worker of joblib's). Each job used to draw the same data again and solve the same least squares
(~2 s a job at N 10^6, D 100). The data follows from the resolved dataset config, its seed
included, so a job whose config equals the last one's takes the kept data. Only the last is
kept, and it is let go before a different one is built: memory never holds two. The key also
holds trainer.threads: the optimum's last bits depend on the thread count.

A custom dataset `_target_` must return the same data for the same config (not, say, draw
from torch's global generator) for its jobs to be reused safely.
"""

from __future__ import annotations

import gc
import json
import logging

from omegaconf import DictConfig, OmegaConf

from linreg_lab.data import RegressionData
from linreg_lab.engines.least_squares import LeastSquares

log = logging.getLogger(__name__)

_COLLECT_MIN_BYTES = 1 << 26


def key_of(cfg: DictConfig, threads: object) -> str:
    """What the data and its optimum depend on: the resolved dataset config, the threads."""
    config = OmegaConf.to_container(cfg.dataset, resolve=True)
    return json.dumps([config, str(threads)], sort_keys=True, default=str)


class DataReuse:
    """A run's data source (experiment.DataSource) that keeps the last dataset for the next job."""

    def __init__(self) -> None:
        self._last: tuple[str, RegressionData, LeastSquares] | None = None

    def get(self, cfg: DictConfig, trainer, build) -> tuple[RegressionData, LeastSquares]:
        """The kept data if cfg's dataset (and threads) equal the last job's, else build(cfg,
        trainer)'s, kept in their place (the old ones are let go first)."""
        key = key_of(cfg, trainer.threads)
        if self._last is not None and self._last[0] == key:
            log.info("dataset: the same as the previous job's, reused")
            return self._last[1], self._last[2]
        self.clear()
        data, optimum = build(cfg, trainer)
        self._last = (key, data, optimum)
        return data, optimum

    def clear(self) -> None:
        """Let the kept data go, now: a finished job's frames can hold it in a reference cycle,
        which only the cycle collector frees. The collector takes ~0.2 s once torch and
        matplotlib are loaded: only large data is worth it."""
        if self._last is not None:
            X = getattr(self._last[1], "X", None)  # a streamed table holds no rows
            self._last = None
            if X is not None and X.element_size() * X.numel() >= _COLLECT_MIN_BYTES:
                gc.collect()
