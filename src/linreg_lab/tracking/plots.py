"""A run's pictures, logged as artifacts: the loss curve and the parameters against the truth.

matplotlib is imported only here, when plotting (it costs ~0.5 s). Figures are built with
matplotlib.figure.Figure rather than pyplot: they render through Agg without switching the
caller's backend (a notebook keeps its own) and need no closing.

The plots are drawn from PlotInputs, plain numbers, by the MLflow helper process: the training
process goes on to the next job meanwhile.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from linreg_lab.tracking import records

LOSS_PLOT = "plots/loss.png"
PARAMETERS_PLOT = "plots/parameters.png"
MAX_PANELS = 11  # one panel per parameter (w_0..w_9 and b) up to D = 10, errors beyond
log = logging.getLogger(__name__)
# A title at a fixed height: left to matplotlib, it measures every tick label of the axes to
# place it (half the time to draw a figure).
_TITLE_Y = 1.0
# zlib's fastest level: ~15 ms less per run's two plots; files ~10% larger.
_PNG_OPTIONS = {"compress_level": 1}

History = Sequence[dict[str, float]]  # per-epoch metrics, index 0 = epoch 1


def fixed_figure(width: float, height: float, right: float = 0.2, top: float = 0.6):
    """A figure with fixed margins (right and top in inches): matplotlib's layout engines
    double the time to save."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    # A canvas of its own: savefig otherwise makes a new one each time, and with it a new
    # renderer whose text-size and mathtext caches start empty (~half the time to save).
    FigureCanvasAgg(fig)
    # Margins in inches, so small and tall figures both keep room for titles and labels.
    fig.subplots_adjust(
        left=0.75 / width, right=1 - right / width, bottom=0.55 / height, top=1 - top / height,
        wspace=0.35, hspace=0.75,
    )  # fmt: skip
    return fig


def _series(history: History, key: str) -> tuple[list[int], list[float]]:
    points = [(i + 1, m[key]) for i, m in enumerate(history) if key in m]
    return [p[0] for p in points], [p[1] for p in points]


def _single_axes_layout(log_scale: bool, ylabel: str, title: str):
    """One axes over epochs: the loss plot, and the errors plot when D is above 10."""
    fig = fixed_figure(6.4, 4.0)
    ax = fig.add_subplot()
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, y=_TITLE_Y)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, which="both", alpha=0.3)
    return fig


_LOSS_LABELS = ("mean squared error", "training loss")
_ERRORS_LABELS = (
    "distance to the true parameters",
    "parameter errors (too many weights to plot one by one)",
)


def _draw_loss(fig, history: History, optimum_loss: float, noise_floor: float) -> None:
    (ax,) = fig.axes
    epochs, loss = _series(history, "train/loss")
    ax.plot(epochs, loss, marker="o", color="C0", label="train/loss (full data)")
    val_epochs, val_loss = _series(history, "val/loss")
    if val_loss:
        ax.plot(val_epochs, val_loss, marker="s", color="C1", label="val/loss")
    batch_epochs, batch_loss = _series(history, "train/last_batch_loss")
    if batch_loss:
        ax.plot(batch_epochs, batch_loss, ls="", marker=".", color="C0", alpha=0.4,
                label="train/last_batch_loss")  # fmt: skip
    # A reference line at 0 cannot be drawn on a log scale (noise_std=0 gives a zero floor).
    if optimum_loss > 0:
        ax.axhline(
            optimum_loss, color="C2", ls="--", label=f"least-squares optimum {optimum_loss:.3g}"
        )
    if noise_floor > 0:
        ax.axhline(
            noise_floor, color="C3", ls=":", label=f"noise floor noise_std² {noise_floor:.3g}"
        )
    ax.legend(fontsize=8)


def _loss_log_scale(history: History) -> bool:
    return any(v > 0 and math.isfinite(v) for v in _series(history, "train/loss")[1])


def loss_figure(history: History, optimum_loss: float, noise_floor: float):
    """train/loss per epoch on a log scale, with the least-squares optimum and the noise floor."""
    fig = _single_axes_layout(_loss_log_scale(history), *_LOSS_LABELS)
    _draw_loss(fig, history, optimum_loss, noise_floor)
    return fig


def _parameter_keys(history: History, true_w: Sequence[float], true_b: float):
    """(metric, truth) per panel; None when there are too many weights to plot one by one."""
    d = len(true_w)
    if d + 1 > MAX_PANELS or not all(f"param/w_{i}" in history[-1] for i in range(d)):
        return None
    return [(f"param/w_{i}", float(true_w[i])) for i in range(d)] + [("param/b", float(true_b))]


def _parameters_layout(panels: int):
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig = fixed_figure(3.0 * cols, 2.3 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for n, ax in enumerate(axes):
        if n >= panels:
            ax.set_visible(False)
            continue
        ax.set_title("b" if n == panels - 1 else f"w_{n}", y=_TITLE_Y)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
    fig.suptitle("parameters: recovered per epoch against the truth")
    return fig


def _draw_parameters(fig, history: History, keys, fitted: Sequence[float] | None) -> None:
    axes = fig.axes
    for n, (key, truth) in enumerate(keys):
        ax = axes[n]
        epochs, values = _series(history, key)
        ax.plot(epochs, values, marker="o", color="C0", label="recovered")
        ax.axhline(
            truth, color="C3", ls="--", label="true" if fitted is not None else "least squares"
        )
        if fitted is not None:
            ax.axhline(fitted[n], color="C2", ls=":", label="least squares")
    axes[0].legend(fontsize=7)


def parameters_figure(
    history: History,
    true_w: Sequence[float],
    true_b: float,
    fitted: Sequence[float] | None = None,
):
    """Each w_i and b per epoch against its true value (D <= 10); the errors for larger D.

    fitted: the least-squares [w..., b], drawn as a third line when given.
    """
    keys = _parameter_keys(history, true_w, true_b)
    if keys is None:
        return errors_figure(history)
    fig = _parameters_layout(len(keys))
    _draw_parameters(fig, history, keys, fitted)
    return fig


_ERROR_KEYS = (("error/w_l2", "C0"), ("error/b_abs", "C1"))


def _errors_log_scale(history: History) -> bool:
    values = [v for key, _ in _ERROR_KEYS for v in _series(history, key)[1]]
    return bool(values) and all(v > 0 for v in values)


def _draw_errors(fig, history: History) -> None:
    (ax,) = fig.axes
    for key, color in _ERROR_KEYS:
        epochs, values = _series(history, key)
        if values:
            ax.plot(epochs, values, marker="o", color=color, label=key)
    if ax.lines:
        ax.legend(fontsize=8)


def errors_figure(history: History):
    """error/w_l2 and error/b_abs per epoch: the parameter plot when D is above 10."""
    fig = _single_axes_layout(_errors_log_scale(history), *_ERRORS_LABELS)
    _draw_errors(fig, history)
    return fig


@dataclass(frozen=True)
class PlotInputs:
    """What the plots show, as plain numbers (cheap to send to the MLflow helper)."""

    history: list[dict[str, float]]
    true_w: list[float]
    true_b: float
    noise_floor: float
    optimum_loss: float
    fitted: list[float]  # least-squares w..., b

    @classmethod
    def of(cls, history: History, data, optimum) -> PlotInputs:
        """From a run's EpochMonitor history, its RegressionData and LeastSquares; without a
        truth (real data) the least-squares parameters are the reference lines."""
        fitted = [float(v) for v in optimum.w.cpu().tolist()] + [optimum.b]
        if not data.has_truth:
            return cls([dict(m) for m in history], fitted[:-1], fitted[-1], 0.0, optimum.loss, [])
        true_w = [float(v) for v in data.true_w.tolist()]
        return cls(
            [dict(m) for m in history], true_w, data.true_b, data.noise_std**2,
            optimum.loss, fitted,
        )  # fmt: skip


def _draw_all(inputs: PlotInputs, make) -> dict[str, object]:
    """The run's figures by artifact path, each drawn on make(key, layout, *args): a figure
    with that layout, its axes decorated but empty."""
    history = inputs.history
    loss_log = _loss_log_scale(history)
    loss = make(("loss", loss_log), _single_axes_layout, loss_log, *_LOSS_LABELS)
    _draw_loss(loss, history, inputs.optimum_loss, inputs.noise_floor)
    keys = _parameter_keys(history, inputs.true_w, inputs.true_b)
    if keys is None:
        errors_log = _errors_log_scale(history)
        # Without a line nothing rescales a kept view: such figures share a layout of their own.
        drawn = any(_series(history, key)[1] for key, _ in _ERROR_KEYS)
        parameters = make(
            ("errors", errors_log, drawn), _single_axes_layout, errors_log, *_ERRORS_LABELS
        )
        _draw_errors(parameters, history)
    else:
        parameters = make(("parameters", len(keys)), _parameters_layout, len(keys))
        _draw_parameters(parameters, history, keys, inputs.fitted or None)
    return {LOSS_PLOT: loss, PARAMETERS_PLOT: parameters}


def figures(inputs: PlotInputs) -> dict[str, object]:
    """The run's figures by artifact path: new figures, the caller's to keep."""
    return _draw_all(inputs, lambda key, layout, *args: layout(*args))


# png_images draws every run on one kept figure per layout: a figure's renderer remembers the
# size of every text it laid out (ticks, titles, labels), and building the axes is a third of
# the work, so a sweep's later runs draw in about half the time (measured 2026-12-01: a 16-run
# sweep's helper spent ~0.6 s a run on new figures). Same pixels as a new figure (a test).
_kept: dict[tuple, object] = {}
_kept_lock = threading.Lock()


def _kept_figure(key: tuple, layout, *args):
    fig = _kept.get(key)
    if fig is None:
        fig = _kept[key] = layout(*args)
        return fig
    for ax in fig.axes:
        for line in list(ax.lines):
            line.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.relim()  # forget the last run's data limits (a new line rescales the view)
    return fig


def warm_up() -> None:
    """Load matplotlib, its fonts and its PNG writer (~0.5 s once), so a first plot is fast."""
    fig = fixed_figure(2.0, 2.0)
    ax = fig.add_subplot()
    ax.plot([1, 2], [1e-4, 1e-3])
    ax.set_yscale("log")
    ax.set_title("warm-up", y=_TITLE_Y)
    fig.savefig(io.BytesIO(), format="png", pil_kwargs=_PNG_OPTIONS)


def png_images(inputs: PlotInputs) -> dict[str, bytes]:
    """The figures rendered as PNG bytes, by artifact path."""
    images = {}
    with _kept_lock:
        for path, fig in _draw_all(inputs, _kept_figure).items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", pil_kwargs=_PNG_OPTIONS)
            images[path] = buffer.getvalue()
    return images


def log_plots(client, run_id: str, inputs: PlotInputs) -> list[str]:
    """Log the loss and parameter plots as run artifacts; returns the artifact paths logged.

    A plotting failure is logged and skipped: the trained run is worth keeping without pictures.
    """
    if not inputs.history:
        return []
    try:
        drawn = png_images(inputs)
        for path, png in drawn.items():
            records.log_bytes(client, run_id, png, path)
    except Exception as error:  # matplotlib or the artifact store; neither should fail the run
        log.warning("could not log the plots of run %s: %s", run_id, error)
        return []
    return list(drawn)
