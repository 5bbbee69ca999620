"""Train a group of sweep jobs in one pass, recording each as its own MLflow run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
from omegaconf import DictConfig

from linreg_lab import build
from linreg_lab.engines import sgd_hyper
from linreg_lab.engines.monitor import Diverged, EpochMonitor
from linreg_lab.engines.orders import seeded_orders
from linreg_lab.engines.vectorized import train_vectorized
from linreg_lab.experiment.run import (
    DataSource,
    Outcome,
    Setup,
    StopEarly,
    build_model,
    end_quietly,
    ended,
    open_run,
    record_end,
    record_start,
    run_experiment,
    set_up,
)  # fmt: skip
from linreg_lab.tracking import FAILED, FINISHED, KILLED, Store

ENGINE = "vectorized"


def train_group(
    configs: Sequence[DictConfig],
    overrides: Sequence[Sequence[str]],
    *,
    store: Store | None = None,
    parent_run_id=None,
    data_source: DataSource | None = None,
    plains: Sequence[dict],
    tags: Sequence[dict[str, str]] | None = None,
    on_epochs: Sequence[Callable[[int, dict], None] | None] | None = None,
) -> list[Outcome]:
    """One pass over the shared data for every config; each gets its own run and outcome.

    The configs must share everything but per-model settings, and be validated and resolved
    (plains): sweep.grouping.group_jobs does both. The members share the first one's
    settings, store and data instead of each setting up its own. tags, on_epochs: each
    member's, as run_experiment's (a member whose hook raises StopEarly ends KILLED; the pass
    trains on with the rest)."""
    tags = list(tags or [{}] * len(configs))
    on_epochs = list(on_epochs or [None] * len(configs))
    shared = set_up(configs[0], store, parent_run_id, data_source, plains[0])
    if shared.data.streamed:  # dataset.stream=auto streamed it: its jobs train one by one
        kept = _Kept(shared)
        return [
            run_experiment(cfg, job, True, store=shared.store, parent_run_id=parent_run_id,
                           data_source=kept, plain=plain, tags=tag, on_epoch=hook)
            for cfg, job, plain, tag, hook in zip(configs, overrides, plains, tags, on_epochs)
        ]  # fmt: skip
    others = [_member(cfg, plain, shared) for cfg, plain in zip(configs[1:], plains[1:])]
    setups = [shared, *others]
    built = [build_model(setup) for setup in setups]
    models = [model for model, _ in built]
    hypers = [sgd_hyper(factory) for _, factory in built]
    data, trainer = shared.data.to(shared.trainer.torch_device()), shared.trainer
    first = EpochMonitor(shared.data, shared.optimum, shared.tracking.log_weights_up_to)
    # The validation rows' sums are the group's: computed once, not once per member.
    monitors = [first] + [
        EpochMonitor(shared.data, shared.optimum, s.tracking.log_weights_up_to,
                     validation=first.validation)
        for s in setups[1:]
    ]  # fmt: skip
    for monitor, model in zip(monitors, models):  # the loss each starts from: its ceiling
        monitor.start(model.weight.detach().view(-1), float(model.bias.detach()))
    # Metrics are posted every second, as a single run's are: a crash loses at most those.
    runs = [open_run(s, o, tags=t) for s, o, t in zip(setups, overrides, tags)]
    with ExitStack() as stack:
        statuses = [stack.enter_context(ended(run)) for run in runs]
        for run, setup, job_overrides in zip(runs, setups, overrides):
            record_start(run, setup, job_overrides)
        theta = torch.stack(
            [torch.cat([m.weight.detach().view(-1), m.bias.detach().view(-1)]) for m in models],
            dim=1,
        ).to(data.X.device)
        d = data.num_features

        def on_epoch_end(epoch: int, last_losses: torch.Tensor, theta: torch.Tensor) -> None:
            losses = shared.optimum.losses(theta).tolist()
            for k, (run, monitor, status) in enumerate(zip(runs, monitors, statuses)):
                if status.status != FINISHED:
                    continue
                w, b = theta[:d, k], float(theta[d, k])
                try:
                    metrics = monitor.measure(epoch, float(last_losses[k]), w, b, losses[k])
                except Diverged as error:
                    status.status = FAILED  # as a single run: the diverged epoch is logged
                    run.log_metrics(error.metrics, step=epoch)
                    end_quietly(run, FAILED, str(error))
                    continue
                run.log_metrics(metrics, step=epoch)
                if on_epochs[k] is not None:
                    try:
                        on_epochs[k](epoch, metrics)
                    except StopEarly as stopped:  # pruned: its run ends, the pass goes on
                        status.status, status.failure = KILLED, str(stopped)
                        run.set_tags(stopped.tags)
                        end_quietly(run, KILLED, str(stopped))
            shared.store.check()

        # The single runs' orders (seeded_orders: the same ones, kept between groups of a
        # sweep when small, as between a basic launcher's jobs): drawing them afresh per
        # group cost a 4 x 4 grid at N 10^5 ~0.5 s of its ~3.8 s (the bench's "grid" row).
        orders = seeded_orders(data.num_samples, trainer.epochs, trainer.shuffle, trainer.seed)
        train_vectorized(
            theta, hypers, data.X, data.y, orders, trainer.batch_size, on_epoch_end,
            trainer.epochs, trainer.compiled,
        )  # fmt: skip
        for k, (model, run, setup, monitor, status) in enumerate(
            zip(models, runs, setups, monitors, statuses)
        ):
            with torch.no_grad():
                model.weight.view(-1).copy_(theta[:d, k])
                model.bias.copy_(theta[d:, k])
            status.engine = ENGINE
            if status.status == FINISHED:
                record_end(run, setup, model, monitor, ENGINE)
    shared.store.check()
    return [
        Outcome(run, status.status, monitor.final, ENGINE, status.failure)
        for run, status, monitor in zip(runs, statuses, monitors)
    ]


class _Kept:
    """The group's data and optimum, for each job that trains alone (a streamed table)."""

    def __init__(self, setup: Setup):
        self.setup = setup

    def get(self, cfg, trainer, build):
        return self.setup.data, self.setup.optimum


def _member(cfg: DictConfig, plain: dict, shared: Setup) -> Setup:
    """A validated member's setup: the group's trainer, store and data; its own tracking
    settings (its run name may differ) and resolved config."""
    return dataclasses.replace(shared, cfg=cfg, tracking=build.tracking(cfg), plain=plain)
