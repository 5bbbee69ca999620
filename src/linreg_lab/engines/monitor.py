"""What each epoch is measured by: full-data loss, parameter errors, excess over the optimum."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from linreg_lab.data import RegressionData
from linreg_lab.engines.least_squares import LeastSquares, least_squares


class Diverged(RuntimeError):
    """The loss exploded (beyond the ceiling below, or inf or NaN): training stops, the run
    ends FAILED with this reason. metrics: the epoch's finite values, to be logged with it
    (the store then shows the epoch where it diverged, as the console does)."""

    def __init__(self, message: str, metrics: dict[str, float] | None = None):
        super().__init__(message)
        self.metrics = metrics or {}


class RankFailed(RuntimeError):
    """A rank of a data-parallel job (engines.distributed) died or failed: training stops, the
    run ends FAILED with this reason."""


# A run has diverged once its full-data loss exceeds this many times the larger of the loss
# it started from and mean(y^2) (the loss of predicting 0): predictions then miss by ~100x the
# target's own size, which no run on its way to the least-squares optimum passes through (a
# converging one stays below its start, give or take minibatch noise near the stability
# bound: ~10x at most in tests/test_monitor.py). Overflow (inf, NaN) is divergence too.
DIVERGENCE_FACTOR = 1e4


@dataclass
class EpochMonitor:
    """Turns each epoch's parameters into the run's metrics and keeps the latest ones."""

    data: RegressionData
    optimum: LeastSquares
    log_weights_up_to: int = 10
    history: list[dict[str, float]] = field(default_factory=list)
    # The validation rows' sums (their MSE for any parameters in ~D^2 operations), if any.
    validation: LeastSquares | None = None
    # The loss beyond which training has diverged (see DIVERGENCE_FACTOR); start() raises it
    # to the initial parameters' loss where that is larger.
    ceiling: float = math.inf

    def __post_init__(self) -> None:
        if self.validation is None and self.data.has_validation:
            split = self.data.split
            self.validation = getattr(self.data, "val_sums", None) or least_squares(
                split.X_val, split.y_val
            )  # a streamed table gathered its validation rows' sums as it was read
        zero = torch.zeros(self.data.num_features, dtype=torch.float64)
        self.ceiling = DIVERGENCE_FACTOR * max(self.optimum.loss_of(zero, 0.0), 1e-30)

    def start(self, w: torch.Tensor, b: float) -> None:
        """The parameters training starts from: a loss above theirs x DIVERGENCE_FACTOR is
        divergence too (a deliberately bad start is not called diverged at once)."""
        self.start_loss(self.optimum.loss_of(w, b))

    def start_loss(self, loss: float) -> None:
        """The loss training starts from (any model's): as start()."""
        if math.isfinite(loss):
            self.ceiling = max(self.ceiling, DIVERGENCE_FACTOR * loss)

    def measure(
        self,
        epoch: int,
        last_batch_loss: float,
        w: torch.Tensor,
        b: float,
        loss: float | None = None,
        val_loss: float | None = None,
    ) -> dict:
        """The epoch's metrics; loss (val_loss) is the full-data (validation) MSE when the
        caller computed it already (a model that is not linear: w is empty)."""
        data = self.data
        loss = self.optimum.loss_of(w, b) if loss is None else loss
        metrics = {"train/loss": loss, "train/last_batch_loss": last_batch_loss}
        if self.validation is not None:
            metrics["val/loss"] = self.validation.loss_of(w, b) if val_loss is None else val_loss
        if w.numel() == data.num_features:
            w_cpu = w.detach().float().cpu()
            if data.num_features <= self.log_weights_up_to:
                metrics.update({f"param/w_{i}": float(v) for i, v in enumerate(w_cpu)})
            metrics["param/b"] = b
            if data.has_truth:
                metrics["error/w_l2"] = float(torch.linalg.vector_norm(w_cpu - data.true_w))
                metrics["error/b_abs"] = abs(b - data.true_b)
            theta = torch.cat([w_cpu.double(), torch.tensor([b], dtype=torch.float64)])
            metrics["error/lsq_l2"] = float(torch.linalg.vector_norm(theta - self.optimum.theta))
        metrics["error/excess_loss"] = loss - self.optimum.loss
        self.history.append(metrics)
        # The loss sums in float64 and can stay finite while float32 values have overflowed.
        blown = [key for key, value in metrics.items() if not math.isfinite(value)]
        if blown:
            key = "train/loss" if "train/loss" in blown else blown[0]
            why = f"{key}={metrics[key]} (try a smaller optimizer.lr)"
        elif loss > self.ceiling:
            why = (f"train/loss={loss:.4g}, above {self.ceiling:.3g} ({DIVERGENCE_FACTOR:.0e} x "
                   "its starting loss or mean(y^2)); try a smaller optimizer.lr")  # fmt: skip
        else:
            return metrics
        finite = {key: value for key, value in metrics.items() if math.isfinite(value)}
        raise Diverged(f"diverged at epoch {epoch}: {why}", finite)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}
