"""The learning rates a dataset allows, from its least-squares sums (no pass over the data).

Under torch's MSE (the mean of squared errors, no 1/2) the loss's Hessian is exact and constant:
H = 2 G / N, G = [X 1]'[X 1] (the bias column included), so lambda_max(H) = 2 lambda_max(G / N).

- **Full batch (exact).** Gradient descent x <- x - lr (H x + wd x - ...) diverges for
  lr > 2 / (lambda_max(H) + wd) (LeCun, Simard and Pearlmutter, NIPS 1992). With heavy-ball
  momentum m (torch's, dampening d) the bound becomes 2 (1 + m) / ((1 - d) (lambda_max(H) + wd));
  with Nesterov's, 2 (1 + m) / ((1 + 2m) (1 - d) (lambda_max(H) + wd)).
- **Minibatch (an estimate).** Below a critical batch size the largest stable step grows about
  linearly with the batch, above it saturates at the full-batch bound (Ma, Bassily and Belkin,
  ICML 2018): lr*(b) = 2 b / (2 beta + (b - 1) lambda_max(H)) for batch b, beta the mean of the
  rows' squared norms ||[x 1]||^2 (trace(G / N)) -- they use the largest norm, a worst case that
  is 4x too cautious on the tutorial's data. Written
  1 / lr*(b) = beta / b + (1 - 1/b) lambda_max(H) / 2, it is a noise term and a curvature
  term. Heavy-ball momentum m amplifies the noise 1 / (1 - m) times (the steps' effective
  size) and moves the curvature term as it moves the full-batch bound:
  1 / lr*(b) = (1 - d) (beta / (b (1 - m)) + (1 - 1/b) lambda_max(H) / (2 (1 + m))).
  Scaling the whole estimate by (1 + m) instead was 18x too high at batch 1, m = 0.9.
  Measured (20 epochs, bench/stability.py, README): within 10% on the tutorial's data at every
  batch size and momentum 0 and 0.9, and on diabetes from batch 8 on without momentum; 1.4x
  too high on diabetes at batch 1 (m = 0) and at batch 32 (m = 0.9), where a few rows of large
  norm decide. It is what SGD's noise allows on average, not a guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Beyond this many parameters the spectrum is not computed whole: lambda_max by power iteration.
_EIGEN_MAX = 2048


@dataclass(frozen=True)
class Curvature:
    """The spectrum of G / N = [X 1]'[X 1] / N (half the MSE's Hessian)."""

    lambda_max: float
    lambda_min: float  # nan where the spectrum was not computed whole
    trace: float  # the mean squared norm of a row [x 1]

    @property
    def condition_number(self) -> float:
        return self.lambda_max / self.lambda_min if self.lambda_min > 0 else math.inf

    @property
    def critical_lr(self) -> float:
        """Plain gradient descent diverges above this learning rate: 2 / lambda_max(H)."""
        return 1.0 / self.lambda_max

    def full_batch_bound(self, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        """The largest stable lr of full-batch (S)GD with these torch.optim.SGD settings."""
        return self._scaled(2.0 / (2.0 * self.lambda_max + weight_decay),
                            momentum, dampening, nesterov)  # fmt: skip

    def batch_bound(self, batch_size: int, momentum=0.0, dampening=0.0, nesterov=False,
                    weight_decay=0.0) -> float:  # fmt: skip
        """Minibatch SGD's estimated largest stable lr at batch_size (see the module)."""
        b = max(1, int(batch_size))
        noise = self.trace / b  # the gradient noise of one batch's rows
        curve = ((b - 1) * 2.0 * self.lambda_max + b * weight_decay) / (2.0 * b)
        if momentum > 0:  # noise is amplified 1/(1-m) times, curvature's bound moves (1+m)x
            keep = max(1e-12, 1.0 - dampening)
            factor = (1.0 + momentum) / ((1.0 + 2.0 * momentum) if nesterov else 1.0)
            inverse = keep * (noise / max(1e-12, 1.0 - momentum) + curve / factor)
        else:
            inverse = noise + curve
        return min(1.0 / inverse,
                   self.full_batch_bound(momentum, dampening, nesterov, weight_decay))  # fmt: skip

    @staticmethod
    def _scaled(bound: float, momentum: float, dampening: float, nesterov: bool) -> float:
        if momentum <= 0:
            return bound
        keep = max(1e-12, 1.0 - dampening)
        factor = (1.0 + momentum) / ((1.0 + 2.0 * momentum) if nesterov else 1.0)
        return bound * factor / keep


def curvature(gram: torch.Tensor, num_samples: int) -> Curvature:
    """The spectrum of gram / num_samples (float64)."""
    A = gram.double().cpu() / max(1, num_samples)
    trace = float(A.diagonal().sum())
    if A.shape[0] <= _EIGEN_MAX:
        values = torch.linalg.eigvalsh(A)
        return Curvature(float(values[-1]), max(0.0, float(values[0])), trace)
    v = torch.ones(A.shape[0], dtype=torch.float64)
    top = 0.0
    for _ in range(100):  # power iteration: G is positive semi-definite
        v = A @ v
        top = float(v.norm())
        v /= top
    return Curvature(top, math.nan, trace)


# "may diverge" from this fraction of the minibatch estimate on.
NEAR = 0.7


@dataclass(frozen=True)
class Verdict:
    """One job's learning rate against its dataset's bounds."""

    lr: float
    full_batch_bound: float
    batch_bound: float

    @property
    def word(self) -> str:
        """'will diverge' (above the exact full-batch bound), 'may diverge' (above 70% of the
        minibatch estimate: on diabetes at batch 1 SGD diverged at 0.72x of it), or 'stable'."""
        if self.lr > self.full_batch_bound:
            return "will diverge"
        if self.lr > NEAR * self.batch_bound:
            return "may diverge"
        return "stable"

    def why(self, batch_size: int) -> str:
        """'lr 1.2 is above 0.964, the full-batch bound of its data: will diverge' (or near or
        above the minibatch estimate: may diverge); what a sweep and a run print before they
        start."""
        if self.word == "will diverge":
            where = f"above {self.full_batch_bound:.3g}, the full-batch bound of its data"
        else:
            near = "near" if self.lr <= self.batch_bound else "above"
            where = f"{near} ~{self.batch_bound:.3g}, the estimated bound at batch {batch_size}"
        return f"lr {self.lr:.3g} is {where}: {self.word}"


def verdict(c: Curvature, sgd: dict, batch_size: int) -> Verdict | None:
    """The verdict for torch.optim.SGD settings (a dict: lr, momentum, ...), None for other
    optimizers (Adam's steps are not bounded this way)."""
    if not str(sgd.get("_target_", "torch.optim.SGD")).endswith("SGD"):
        return None
    settings = {k: float(sgd.get(k) or 0.0) for k in ("momentum", "dampening", "weight_decay")}
    nesterov = bool(sgd.get("nesterov", False))
    return Verdict(
        float(sgd["lr"]),
        c.full_batch_bound(settings["momentum"], settings["dampening"], nesterov,
                           settings["weight_decay"]),
        c.batch_bound(batch_size, settings["momentum"], settings["dampening"], nesterov,
                      settings["weight_decay"]),
    )  # fmt: skip


def params(c: Curvature, v: Verdict | None) -> dict[str, float | str]:
    """What a run logs (params, constant over its epochs)."""
    out: dict[str, float | str] = {
        "stability.lambda_max": c.lambda_max, "stability.lambda_min": c.lambda_min,
        "stability.condition_number": c.condition_number, "stability.lr_critical": c.critical_lr,
    }  # fmt: skip
    if v is not None:
        out.update({
            "stability.lr_bound_full_batch": v.full_batch_bound,
            "stability.lr_bound_batch": v.batch_bound, "stability.verdict": v.word,
        })  # fmt: skip
    return {k: (f"{x:.6g}" if isinstance(x, float) else x) for k, x in out.items()}
