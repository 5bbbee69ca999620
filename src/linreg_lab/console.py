"""What the user sees in the terminal: progress while training, a summary after."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _file_handlers() -> list[logging.FileHandler]:
    """The root logger's files: a Hydra job's log (hydra.job_logging), if any."""
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def log_files() -> list[str]:
    """The paths of the job's log files (_file_handlers)."""
    return [handler.baseFilename for handler in _file_handlers()]


def to_log_files(text: str) -> None:
    """What the console showed, also in the job's log: the log holds what the user saw."""
    record = logging.LogRecord(__name__, logging.INFO, __file__, 0, text.rstrip("\n"), None, None)
    for handler in _file_handlers():
        handler.handle(record)


def say(line: str, file=None) -> None:
    """Print a line for the user (stdout unless file) and keep it in the job's log."""
    print(line, file=file or sys.stdout, flush=True)
    to_log_files(line)


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

    console = Console(highlight=False, soft_wrap=True, record=True)  # record: for the job's log
    metrics = outcome.metrics
    from linreg_lab.model import linear_parameters

    params = linear_parameters(model)
    if params is None:  # a model of the user's own: its losses only
        _losses_only(console, outcome, tracking, type(model).__name__)
        return
    w, b = params
    w = w.cpu().tolist()
    shown = min(len(w), 10)
    title = f"{outcome.status} ({outcome.engine} engine)"
    if outcome.failure:  # the engine may not have said which it was before the failure
        title = f"{outcome.status}: {outcome.failure}"
    truth = data.has_truth
    reference = data.true_w.tolist() if truth else list(fitted[0])
    reference_b = data.true_b if truth else fitted[1]
    scaling = data.scaling
    caption = "units: the data's own"
    if scaling is not None and not scaling.is_identity:  # back to the table's own units
        w, b = _original(scaling, w, b)
        reference, reference_b = _original(scaling, reference, reference_b)
        caption = ("units: the table's own (training ran on standardized columns; "
                   "parameters.json has both)")  # fmt: skip
    if data.streamed:
        caption += (f"; streamed: {data.num_samples} training rows from {len(data.groups)} row "
                    f"groups, shuffled {data.window} rows at a time")  # fmt: skip
        if data.hold:
            caption += ", each rank holding its share's rows from the first epoch on"
    table = Table(title=title, caption=caption)
    table.add_column("parameter")
    table.add_column("true" if truth else "least squares", justify="right")
    table.add_column("recovered", justify="right")
    names = list(data.feature_names or [f"w_{i}" for i in range(len(w))])
    for i in range(shown):
        table.add_row(names[i], _number(reference[i]), _number(w[i]), end_section=i == shown - 1)
    if shown < len(w):
        table.add_row(f"... {len(w) - shown} more", "", "", end_section=True)
    # Named so that no column can be mistaken for it (a table may have a column "b").
    intercept = "(intercept)" if data.feature_names else "b"
    if intercept in names:
        intercept += " [not a column]"
    table.add_row(intercept, _number(reference_b), _number(b))
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
    to_log_files(console.export_text())


def _losses_only(console, outcome, tracking, name: str) -> None:
    from linreg_lab.tracking.store import mask_secrets

    metrics, nan = outcome.metrics, float("nan")
    title = f"{outcome.status}: {outcome.failure}" if outcome.failure else outcome.status
    parts = [f"{key} {metrics[key]:.4e}" for key in ("train/loss", "val/loss", "test/loss")
             if key in metrics]  # fmt: skip
    parts.append(f"error/excess_loss {metrics.get('error/excess_loss', nan):.2e} (vs the best "
                 "linear fit)")  # fmt: skip
    console.print(f"{title} ({outcome.engine} engine, model {name}): " + ", ".join(parts))
    console.print(f"MLflow run {outcome.run_id} in {mask_secrets(tracking.uri)}")
    console.print(f"Browse it: {browse_command(tracking)}")
    to_log_files(console.export_text())


def _original(scaling, w, b) -> tuple[list[float], float]:
    import numpy as np

    w_original, b_original = scaling.original_units(np.asarray(w, np.float64), float(b))
    return w_original.tolist(), float(b_original)


def _number(value: float) -> str:
    """4 decimals where that shows the value, else 5 significant digits (173.9451, 2.1e-07)."""
    value = float(value)
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e7 else f"{value:.5g}"


def browse_command(tracking) -> str:
    """The command that opens the UI on the store and experiment that tracking names."""
    import os
    import shlex
    from pathlib import Path

    from linreg_lab.paths import DEFAULT_TRACKING_URI, PROJECT_ROOT

    # The command as it can be typed where the user stands: .venv/bin/... and `make ui` only
    # in the project's folder; elsewhere the program beside this Python, by its full path.
    here = Path.cwd().resolve() == PROJECT_ROOT.resolve()
    program = Path(sys.executable).parent / "linreg-ui"
    if here and (PROJECT_ROOT / ".venv" / "bin" / "linreg-ui").exists():
        program = Path(".venv/bin/linreg-ui")
    elif not os.access(program, os.X_OK):
        program = Path("linreg-ui")
    ui = f"{shlex.quote(str(program))} --experiment {shlex.quote(tracking.experiment_name)}"
    if tracking.uri != DEFAULT_TRACKING_URI:
        return f"{ui} --uri {shlex.quote(tracking.uri)}"
    return f"make ui   (or {ui})" if here else ui


def job_line(job: str, outcome) -> None:
    """One line per finished sweep job: no bars interleaving between parallel workers.

    Printed by the MLflow helper once it has created the run (it knows the id): the sweep goes
    on meanwhile.
    """
    loss = outcome.metrics.get("train/loss", float("nan"))
    status = outcome.status
    if status == "KILLED" and str(outcome.failure or "").startswith("pruned"):
        status = "PRUNED"  # by a sweeper's pruner: its run's tags say at which epoch
    line = f"[{job}] {status:<8} train/loss {loss:.4e}  run {{run_id}}"
    outcome.run.store.announce(line, outcome.run, log_files())
