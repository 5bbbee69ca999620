"""What the user sees in the terminal: progress while training, a summary after."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def interactive() -> bool:
    return sys.stdout.isatty()


@contextmanager
def epoch_progress(epochs: int, quiet: bool) -> Iterator[Callable[[int, float], None]]:
    """A progress bar over epochs with the current loss; silent when not on a terminal."""
    if quiet or not interactive():
        yield lambda epoch, loss: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("epoch"), MofNCompleteColumn(), BarColumn(),
        TextColumn("train/loss {task.fields[loss]}"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("train", total=epochs, loss="-")

        def advance(epoch: int, loss: float) -> None:
            progress.update(task, completed=epoch, loss=f"{loss:.3e}")

        yield advance


def summary(outcome, data, model, tracking, fitted=None) -> None:
    """Final loss, true (or least-squares) vs recovered parameters, the run id and how to open
    the UI; fitted: the least-squares (w list, b)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    metrics = outcome.metrics
    from linreg_lab.model import linear_parameters

    w, b = linear_parameters(model)
    w = w.cpu().tolist()
    shown = min(len(w), 10)
    title = f"{outcome.status} ({outcome.engine} engine)"
    if outcome.failure:  # the engine may not have said which it was before the failure
        title = f"{outcome.status}: {outcome.failure}"
    truth = data.has_truth
    table = Table(title=title)
    table.add_column("parameter")
    table.add_column("true" if truth else "least squares", justify="right")
    table.add_column("recovered", justify="right")
    reference = data.true_w.tolist() if truth else fitted[0]
    names = data.feature_names or [f"w_{i}" for i in range(len(w))]
    for i in range(shown):
        table.add_row(names[i], f"{float(reference[i]):.4f}", f"{w[i]:.4f}")
    if shown < len(w):
        table.add_row(f"... {len(w) - shown} more", "", "")
    table.add_row("b", f"{(data.true_b if truth else fitted[1]):.4f}", f"{b:.4f}")
    console.print(table)
    nan = float("nan")
    loss = metrics.get("train/loss", nan)
    parts = [f"train/loss {loss:.4e}"]
    if truth:
        parts[0] += f" (noise floor {data.noise_std**2:.1e})"
        parts += [f"error/w_l2 {metrics.get('error/w_l2', nan):.2e}",
                  f"error/b_abs {metrics.get('error/b_abs', nan):.2e}"]  # fmt: skip
    for key in ("val/loss", "test/loss", "error/lsq_l2"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4e}")
    parts.append(f"error/excess_loss {metrics.get('error/excess_loss', nan):.2e}")
    console.print(", ".join(parts))
    from linreg_lab.tracking.store import mask_secrets

    console.print(f"MLflow run {outcome.run_id} in {mask_secrets(tracking.uri)}")
    console.print(f"Browse it: {browse_command(tracking)}; plots under the run's Artifacts, plots/")


def browse_command(tracking) -> str:
    """The command that opens the UI on the store and experiment that tracking names."""
    import shlex

    from linreg_lab.paths import DEFAULT_TRACKING_URI

    ui = f".venv/bin/linreg-ui --experiment {shlex.quote(tracking.experiment_name)}"
    if tracking.uri != DEFAULT_TRACKING_URI:
        return f"{ui} --uri {shlex.quote(tracking.uri)}"
    return f"make ui   (or {ui})"


def job_line(job: str, outcome) -> None:
    """One line per finished sweep job: no bars interleaving between parallel workers.

    Printed by the MLflow helper once it has created the run (it knows the id): the sweep goes
    on meanwhile.
    """
    loss = outcome.metrics.get("train/loss", float("nan"))
    line = f"[{job}] {outcome.status:<8} train/loss {loss:.4e}  run {{run_id}}"
    outcome.run.store.announce(line, outcome.run)
