"""The last dataset and its least-squares optimum, kept for the next job of a sweep.

A sweep's jobs usually share their dataset config (a learning-rate or batch-size sweep), and a
launcher runs them one after another in one process (the basic and vectorized launchers; each
worker of joblib's). Each job used to draw the same data again and solve the same least squares
(~2 s a job at N 10^6, D 100). The data follows from the resolved dataset config, its seed
included, so a job whose config equals the last one's takes the kept data. Only the last is
kept, and it is let go before a different one is built: memory never holds two.
"""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig, OmegaConf

from linreg_lab.data import RegressionData
from linreg_lab.training.evaluate import LeastSquares

log = logging.getLogger(__name__)

_last: tuple[str, RegressionData, LeastSquares] | None = None


def key_of(cfg: DictConfig) -> str:
    """What the data depends on: the resolved dataset config."""
    config = OmegaConf.to_container(cfg.dataset, resolve=True)
    return json.dumps(config, sort_keys=True, default=str)


def kept(key: str) -> tuple[RegressionData, LeastSquares] | None:
    """The kept data and optimum for key; otherwise None, and the kept ones are let go."""
    global _last
    if _last is not None and _last[0] == key:
        log.info("dataset: the same as the previous job's, reused")
        return _last[1], _last[2]
    _last = None
    return None


def keep(key: str, data: RegressionData, optimum: LeastSquares) -> None:
    global _last
    _last = (key, data, optimum)
