"""The reference tutorial's training loop, timed on given data (for the in-process figures)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import data


@dataclass(frozen=True)
class Timing:
    seconds: float  # for the whole job (extrapolated when steps were capped)
    samples: int  # in the whole job
    steps_run: int
    steps_total: int

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def extrapolated(self) -> bool:
        return self.steps_run < self.steps_total


def tutorial_fit(
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    lr: float,
    num_epochs: int = 3,
    max_steps: int | None = None,
) -> Timing:
    """The tutorial's set-up and loop, verbatim, stopped after max_steps and extrapolated.

    Set-up (DataLoader, nn.Linear, loss, optimizer) and each epoch's shuffle are timed once and
    counted once per epoch; the steps run are scaled to the job's total steps.
    """
    # Contiguous, as the tutorial's torch.normal and matmul make them (ours are packed rows).
    features, labels = features.contiguous(), labels.contiguous()
    n = features.shape[0]
    steps_per_epoch = -(-n // batch_size)
    steps_total = steps_per_epoch * num_epochs
    cap = steps_total if max_steps is None else min(max_steps, steps_total)

    begin = time.perf_counter()
    dataset = data.TensorDataset(features, labels)
    data_iter = data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    net = nn.Linear(features.shape[1], 1)
    net.weight.data.normal_(0, 0.01)
    net.bias.data.fill_(0)
    loss = nn.MSELoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    setup = time.perf_counter() - begin

    steps, shuffle_s, loop_s = 0, 0.0, 0.0
    for _ in range(num_epochs):
        start = time.perf_counter()
        batches = iter(data_iter)  # draws the epoch's permutation
        shuffle_s += time.perf_counter() - start
        start = time.perf_counter()
        for X, y in batches:
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741 (the tutorial's name)
            optimizer.zero_grad()
            l.backward()
            optimizer.step()
            steps += 1
            if steps >= cap:
                break
        loop_s += time.perf_counter() - start
        if steps >= cap:
            break
    epochs_started = -(-steps // steps_per_epoch)
    seconds = setup + shuffle_s * num_epochs / epochs_started + loop_s * steps_total / steps
    return Timing(seconds, n * num_epochs, steps, steps_total)
