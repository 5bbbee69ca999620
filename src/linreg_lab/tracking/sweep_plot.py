"""The sweep's picture: its ranking metric over what was swept, with the dataset's lr bound.

One swept key: a line. Two: a heatmap (the learning rate across when it is one of them).
Three or more: parallel coordinates, one axis per key and one for the metric, a line per job.
Cells and lines of jobs the pre-flight flagged are marked (param `stability.verdict`).
Rows are tracking.report's Row (run_id, params, loss, val_loss, ...): not imported, which
would make the two modules import each other.
"""

from __future__ import annotations

import math

from linreg_lab.tracking.plots import fixed_figure

LR = "optimizer.lr"
FLAGGED = {"will diverge": ("red", "-"), "may diverge": ("orange", "--")}


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _axis(rows: list[object], key: str) -> list[str]:
    """A swept key's values as labels: in numeric order where they are numbers."""
    values = {row.params.get(key, "") for row in rows}
    return sorted(values, key=lambda v: (math.isnan(_number(v)), _number(v), v))


def _value(row: object, metric: str) -> float:
    return row.val_loss if metric == "val/loss" else row.loss


def draw(rows: list[object], keys: list[str], metric: str):
    """(figure, artifact name), or (None, None) where there is nothing to draw."""
    if not keys:
        return None, None
    from matplotlib.figure import Figure  # not pyplot: no backend switch, ~0.3 s less import

    if len(keys) == 1:
        return _line(Figure, rows, keys[0], metric)
    if len(keys) == 2:
        return _heatmap(Figure, rows, keys, metric)
    return _parallel(Figure, rows, keys, metric)


def _line(Figure, rows: list[object], key: str, metric: str):
    points = sorted(
        (_number(row.params[key]), _value(row, metric))
        for row in rows
        if math.isfinite(_value(row, metric))
    )
    if not points:  # every run failed: nothing to draw
        return None, None
    fig = fixed_figure(6, 4, top=0.3)
    ax = fig.subplots()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    if all(p[1] > 0 for p in points):
        ax.set_yscale("log")
    if key == LR and all(p[0] > 0 for p in points):
        ax.set_xscale("log")
        bounds = {row.params.get("stability.lr_bound_full_batch") for row in rows} - {None}
        if len(bounds) == 1:  # one dataset and optimizer: its stable region, drawn
            bound = _number(bounds.pop())
            ax.axvline(bound, color="red", linestyle="--", label=f"full-batch lr bound {bound:.3g}")
            ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(key)
    ax.set_ylabel(f"final {metric}")
    ax.grid(True, which="both", alpha=0.3)
    return fig, "loss_vs_" + key.replace(".", "_") + ".png"


def _heatmap(Figure, rows: list[object], keys: list[str], metric: str):
    import numpy as np
    from matplotlib.patches import Rectangle

    x_key, y_key = sorted(keys, key=lambda k: k != LR)
    xs, ys = _axis(rows, x_key), _axis(rows, y_key)
    grid = np.full((len(ys), len(xs)), np.nan)
    cells: dict[tuple[int, int], object] = {}
    for row in rows:
        i, j = ys.index(row.params.get(y_key, "")), xs.index(row.params.get(x_key, ""))
        cells[i, j] = row
        if math.isfinite(_value(row, metric)):
            grid[i, j] = _value(row, metric)
    # Constrained: its labels are the swept values, any length (the line's and losses' are
    # numbers: fixed margins, half the time to save).
    fig = Figure(figsize=(1.4 * len(xs) + 2.4, 0.9 * len(ys) + 2.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.log10(grid), cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_yticks(range(len(ys)), ys)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    marked = False
    for (i, j), row in cells.items():
        text = f"{grid[i, j]:.1e}" if np.isfinite(grid[i, j]) else "failed"
        light = not np.isfinite(grid[i, j]) or image.norm(np.log10(grid[i, j])) < 0.5
        color = "black" if light else "white"  # readable on viridis_r's yellow end
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
        flag = FLAGGED.get(row.params.get("stability.verdict", ""))
        if flag:  # the dataset's lr bound, drawn
            marked = True
            edge, style = flag
            ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False,
                                   linewidth=2.5, edgecolor=edge, linestyle=style))  # fmt: skip
    fig.colorbar(image, ax=ax, label=f"log10 final {metric}")
    title = f"final {metric}"
    if marked:
        title += "\nred: lr above the full-batch bound; orange: near its batch size's estimate"
    ax.set_title(title, fontsize=9 if marked else None)
    return fig, "heatmap.png"


def _parallel(Figure, rows: list[object], keys: list[str], metric: str):
    """Parallel coordinates: an axis per swept key (its values evenly spaced, in order), the
    last one the metric (log10); a job is a line, coloured by its metric, grey if it failed."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    keys = sorted(keys, key=lambda k: k != LR)
    labels = {key: _axis(rows, key) for key in keys}
    finite = [math.log10(v) for row in rows if (v := _value(row, metric)) > 0 and math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    norm, cmap = Normalize(low, high), colormaps["viridis_r"]
    width = max(6.0, 1.6 * (len(keys) + 1) + 1.5)
    fig = Figure(figsize=(width, 4.8), layout="constrained")
    ax = fig.subplots()
    positions = range(len(keys) + 1)

    def height(key: str, row: object) -> float:
        values = labels[key]
        return values.index(row.params.get(key, "")) / max(len(values) - 1, 1)

    for row in sorted(
        rows, key=lambda r: -_value(r, metric) if math.isfinite(_value(r, metric)) else math.inf
    ):
        v = _value(row, metric)
        ok = v > 0 and math.isfinite(v)
        ys = [height(key, row) for key in keys] + [norm(math.log10(v)) if ok else 1.05]
        flag = FLAGGED.get(row.params.get("stability.verdict", ""))
        ax.plot(
            positions, ys, marker="o", markersize=3, alpha=0.85,
            color=cmap(norm(math.log10(v))) if ok else "0.6",
            linestyle=flag[1] if flag else ("-" if ok else ":"),
            linewidth=2.2 if flag else 1.2,
        )  # fmt: skip
    for x, key in enumerate(keys):
        ax.axvline(x, color="black", linewidth=0.8)
        values = labels[key]
        for k, label in enumerate(values):
            y = k / max(len(values) - 1, 1)
            ax.text(x - 0.04, y, label, ha="right", va="center", fontsize=7)
    ax.axvline(len(keys), color="black", linewidth=0.8)
    for y in np.linspace(0, 1, 5):
        ax.text(len(keys) + 0.04, y, f"{10 ** norm.inverse(y):.1e}", ha="left", va="center",
                fontsize=7)  # fmt: skip
    ax.text(len(keys) + 0.04, 1.05, "failed", ha="left", va="center", fontsize=7, color="0.4")
    ax.set_xticks(list(positions), [*keys, f"final {metric}"], fontsize=8)
    ax.set_xlim(-0.6, len(keys) + 0.6)
    ax.set_ylim(-0.08, 1.12)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    title = f"final {metric} over {len(keys)} swept keys (a line per job)"
    if any(row.params.get("stability.verdict") in FLAGGED for row in rows):
        title += "\nthick: lr above the full-batch bound (solid) or near its batch size's (dashed)"
    ax.set_title(title, fontsize=9)
    return fig, "parallel_coordinates.png"


def losses(rows: list[object], histories: dict[str, list[tuple[int, float]]],
           optimum: float | None):  # fmt: skip
    """Every job's train/loss per epoch in one picture (log scale), best first, with the
    least-squares optimum: what each job's own loss plot would show, at once.
    histories: run id -> [(step, value)]. (figure, artifact name), or (None, None)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    series = {}
    for row in rows:
        points = [p for p in histories.get(row.run_id, []) if p[1] > 0 and math.isfinite(p[1])]
        if points:
            series[row.run_id] = points
    if not series:
        return None, None
    finals = [h[-1][1] for h in series.values()]
    norm, cmap = LogNorm(min(finals), max(finals) * (1 + 1e-9)), colormaps["viridis_r"]
    fig = fixed_figure(7, 4.5, right=0.1, top=0.45)
    ax = fig.subplots()
    few = len(series) <= 10  # a legend, one colour each; else coloured by final loss
    for index, row in enumerate(r for r in rows if r.run_id in series):
        points = series[row.run_id]
        color = colormaps["tab10"](index) if few else cmap(norm(points[-1][1]))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=2.5,
                linewidth=1.2, color=color, label=row.name if few else None)  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if optimum is not None and optimum > 0 and math.isfinite(optimum):
        ax.axhline(optimum, color="black", linestyle=":", linewidth=1.2,
                   label=f"least-squares optimum {optimum:.3g}")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train/loss")
    failed = len(rows) - len(series)
    title = f"train/loss of the sweep's {len(series)} jobs"
    ax.set_title(title + (f" ({failed} without a finite loss)" if failed else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if few:
        ax.legend(loc="best", fontsize=7)
    else:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="final train/loss")
        if optimum is not None:
            ax.legend(loc="best", fontsize=7)
    return fig, "losses.png"
