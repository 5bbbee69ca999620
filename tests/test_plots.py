"""What a run records for people to look at: its plots, its dataset input, its model."""

from __future__ import annotations

import io
import json

import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.engines.least_squares import least_squares
from linreg_lab.tracking.dataset import digest, generator_params, log_dataset
from linreg_lab.tracking.plots import (
    LOSS_PLOT,
    PARAMETERS_PLOT,
    PlotInputs,
    figures,
    log_plots,
    loss_figure,
    parameters_figure,
    png_images,
)

SPEC = {
    "_target_": "linreg_lab.data.make_synthetic_regression",
    "true_w": [2.8, -1.7, 3.6],
    "true_b": 3.0,
    "num_features": None,
    "num_samples": 200,
    "noise_std": 0.01,
    "seed": 0,
}


def history_for(d: int, epochs: int = 3) -> list[dict[str, float]]:
    """Per-epoch metrics shaped like EpochMonitor's, converging towards w_i = i, b = 1."""
    history = []
    for epoch in range(1, epochs + 1):
        gap = 10.0**-epoch
        metrics = {"train/loss": 1e-4 + gap, "train/last_batch_loss": 1e-4 + 2 * gap}
        if d <= 10:
            metrics.update({f"param/w_{i}": i + gap for i in range(d)})
        metrics.update({"param/b": 1 + gap, "error/w_l2": gap, "error/b_abs": gap / 2})
        history.append(metrics)
    return history


def test_loss_figure_is_log_scaled_with_the_optimum_and_noise_floor():
    fig = loss_figure(history_for(3), optimum_loss=9.9e-5, noise_floor=1e-4)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    curve = ax.lines[0]
    assert list(curve.get_xdata()) == [1, 2, 3]
    levels = {float(line.get_ydata()[0]) for line in ax.lines if len(line.get_ydata()) == 2}
    assert levels == {9.9e-5, 1e-4}
    # noise_std = 0: no zero line on a log axis, and no error.
    fig = loss_figure(history_for(3), optimum_loss=0.0, noise_floor=0.0)
    assert len(fig.axes[0].lines) == 2


def test_parameters_figure_one_panel_per_parameter_then_errors_beyond_ten():
    fig = parameters_figure(history_for(3), [0.0, 1.0, 2.0], 1.0)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["w_0", "w_1", "w_2", "b"]
    truth = panels[2].lines[1].get_ydata()
    assert list(truth) == [2.0, 2.0]
    fig = parameters_figure(history_for(50), [0.0] * 50, 1.0)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["error/w_l2", "error/b_abs"]
    assert ax.get_yscale() == "log"


def test_log_plots_writes_pngs_to_the_run(store):
    client = store.client
    exp = client.create_experiment("plots", (store.root / "artifacts").as_uri())
    run = client.create_run(exp)
    data = make_synthetic_regression(num_samples=200)
    inputs = PlotInputs.of(history_for(3), data, least_squares(data.X, data.y))
    paths = log_plots(client, run.info.run_id, inputs)
    assert paths == [LOSS_PLOT, PARAMETERS_PLOT]
    for path in paths:
        local = client.download_artifacts(run.info.run_id, path, str(store.root))
        with open(local, "rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    # Drawn in the training process instead (the helper was busy): the same pictures.
    drawn = png_images(inputs)
    assert list(drawn) == paths and all(png.startswith(b"\x89PNG") for png in drawn.values())


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def test_png_images_reuse_figures_yet_draw_each_run_as_a_new_figure_would():
    data = make_synthetic_regression(num_samples=200)
    optimum = least_squares(data.X, data.y)
    wide = make_synthetic_regression(num_samples=200, num_features=20)
    runs = [
        PlotInputs.of(history_for(3), data, optimum),
        PlotInputs.of(history_for(3, epochs=7), data, optimum),  # other limits and ticks
        PlotInputs.of(history_for(20, epochs=2), wide, least_squares(wide.X, wide.y)),
        PlotInputs.of(history_for(3, epochs=1), data, optimum),
        # a linear errors plot, then one with no line to draw: the last view must not stay
        PlotInputs(
            [{"train/loss": 1.0, "error/w_l2": 7.0, "error/b_abs": 0.0}],
            [0.0] * 20,
            1.0,
            0.0,
            0.5,
            [],
        ),  # fmt: skip
        PlotInputs([{"train/loss": 1.0}], [0.0] * 20, 1.0, 0.0, 0.5, []),
    ]
    for inputs in runs:
        kept = png_images(inputs)
        fresh = {path: _png(fig) for path, fig in figures(inputs).items()}
        assert kept == fresh
    assert png_images(runs[0]) != png_images(runs[1])


def make(spec: dict):
    return make_synthetic_regression(**{k: v for k, v in spec.items() if k != "_target_"})


def test_dataset_digest_follows_the_generator_not_the_tensor():
    params = generator_params(SPEC, make(SPEC))
    assert params["true_w"] == [2.8, -1.7, 3.6] and "num_features" not in params
    assert digest(params) == digest(generator_params(dict(SPEC), make(SPEC)))
    reseeded = {**SPEC, "seed": 1}
    assert digest(generator_params(reseeded, make(reseeded))) != digest(params)
    drawn = {**SPEC, "num_features": 20}
    drawn_params = generator_params(drawn, make(drawn))
    assert drawn_params["num_features"] == 20 and "true_w" not in drawn_params


def test_log_dataset_records_name_digest_shape_and_generator(store):
    client = store.client
    run = client.create_run(client.create_experiment("datasets"))
    data = make_synthetic_regression(num_samples=200)
    logged = log_dataset(client, run.info.run_id, SPEC, data)
    (entry,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert entry.dataset.name == "synthetic-D3-N200"
    assert entry.dataset.digest == logged
    assert json.loads(entry.dataset.profile)["features_shape"] == [200, 3]
    source = json.loads(entry.dataset.source)["tags"]
    assert source["seed"] == 0 and source["true_w"] == [2.8, -1.7, 3.6]
    assert {(t.key, t.value) for t in entry.tags} == {("mlflow.data.context", "training")}


def test_training_logs_plots_dataset_and_optionally_the_model(store):
    store.train_here("trainer.epochs=2")
    store.train_here("trainer.epochs=2", "optimizer.lr=0.1", "tracking.log_model=true")
    plain, with_model = sorted(store.runs(), key=lambda r: r.info.start_time)
    for run in (plain, with_model):
        artifacts = [a.path for a in store.client.list_artifacts(run.info.run_id, "plots")]
        assert artifacts == [LOSS_PLOT, PARAMETERS_PLOT]
    # Same data, same dataset: the UI shows the two runs trained on one thing.
    digests = {r.inputs.dataset_inputs[0].dataset.digest for r in (plain, with_model)}
    assert len(digests) == 1
    assert not plain.outputs or not plain.outputs.model_outputs
    (output,) = with_model.outputs.model_outputs
    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_tracking_uri(store.uri)
    model = mlflow.pyfunc.load_model(f"models:/{output.model_id}")  # the pyfunc a user loads
    assert with_model.data.tags["linreg.model_uri"] == f"models:/{output.model_id}"
    rows = pd.DataFrame(torch.eye(3).numpy(), columns=["x0", "x1", "x2"])
    weights = model.predict(rows)["y"].to_numpy() - with_model.data.metrics["param/b"]
    assert torch.allclose(torch.tensor(weights), torch.tensor([2.8, -1.7, 3.6]).double(),
                          atol=0.05)  # fmt: skip


def test_sweep_comparison_plot_skips_a_sweep_whose_runs_all_failed():
    from linreg_lab.tracking.report import Row, plot

    def row(lr: str, loss: float, status: str) -> Row:
        return Row(
            f"id{lr}", lr, f"optimizer.lr={lr}", status, loss, loss, "", {"optimizer.lr": lr}
        )

    failed = [row("50", float("nan"), "FAILED"), row("60", float("nan"), "FAILED")]
    assert plot(failed, ["optimizer.lr"]) == (None, None)
    fig, name = plot([*failed, row("0.03", 1e-4, "FINISHED")], ["optimizer.lr"])
    assert name == "loss_vs_optimizer_lr.png" and fig.axes[0].get_yscale() == "log"


def test_sweep_of_three_keys_draws_parallel_coordinates_with_every_label_inside():
    from linreg_lab.tracking.report import Row, plot

    rows = []
    for lr in ("0.01", "0.03", "1.5"):
        for batch in ("10", "100"):
            for epochs in ("2", "3"):
                diverged = lr == "1.5"
                loss = float("nan") if diverged else float(lr) / int(batch) / int(epochs)
                params = {"optimizer.lr": lr, "trainer.batch_size": batch, "trainer.epochs": epochs}
                if diverged:
                    params["stability.verdict"] = "will diverge"
                rows.append(Row(f"{lr}-{batch}-{epochs}", "job", "", "FAILED" if diverged
                                else "FINISHED", loss, loss, "", params))  # fmt: skip
    keys = ["trainer.batch_size", "trainer.epochs", "optimizer.lr"]
    fig, name = plot(rows, keys)
    assert name == "parallel_coordinates.png"
    (ax,) = fig.axes
    assert len(ax.lines) == len(rows) + len(keys) + 1  # a line per job, an axis per key + metric
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["optimizer.lr", "trainer.batch_size", "trainer.epochs", "final train/loss"]
    failed_dashes = [line for line in ax.lines[: len(rows)] if line.get_linewidth() > 2]
    assert len(failed_dashes) == 4  # the lr the pre-flight flagged
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = fig.bbox
    for text in [*ax.texts, *ax.get_xticklabels(), ax.title]:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
