"""Real data: tables, diabetes, splits without leakage, standardization, held-out losses."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from linreg_lab.data import DataError, make_synthetic_regression
from linreg_lab.engines import fit
from linreg_lab.engines.least_squares import least_squares, mse
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.model import init_linear
from linreg_lab.tables import load_diabetes, load_table

SPLIT = {"val": 0.2, "test": 0.0, "seed": 0}


def _houses(tmp_path, n=400, name="houses.csv"):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.normal(100, 20, n), "rooms": rng.integers(1, 6, n) * 1.0})
    frame["city"] = rng.choice(["a", "b"], n)
    frame["price"] = 3 * frame["size"] + 10 * frame["rooms"] + 50 + rng.normal(0, 1, n)
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.drop(columns="city").to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path, frame


def test_the_least_squares_reference_matches_scikit_learn():
    from sklearn.linear_model import LinearRegression

    data = load_diabetes(split=SPLIT)
    optimum = least_squares(data.X, data.y)
    fitted = LinearRegression().fit(data.X.double().numpy(), data.y.double().numpy().ravel())
    np.testing.assert_allclose(optimum.theta[:-1].numpy(), fitted.coef_, rtol=1e-6, atol=1e-9)
    assert optimum.b == pytest.approx(fitted.intercept_, rel=1e-6)


def test_diabetes_trains_near_the_least_squares_optimum():
    data = load_diabetes(split=SPLIT)
    assert data.X.shape == (354, 10) and data.split.X_val.shape == (88, 10)
    optimum = least_squares(data.X, data.y)
    torch.manual_seed(42)
    model = init_linear(torch.nn.Linear(10, 1))
    sgd = functools.partial(torch.optim.SGD, lr=0.03)
    fit(model, sgd, data, TrainerSettings(epochs=200, batch_size=32), lambda *a: None)
    w, b = model.weight.detach().view(-1), float(model.bias.detach())
    assert mse(data.X, data.y, w, b) / optimum.loss < 1.04  # SGD's noise at lr 0.03
    best_val = mse(data.split.X_val, data.split.y_val, optimum.w, optimum.b)
    assert mse(data.split.X_val, data.split.y_val, w, b) / best_val < 1.1
    # Nearly collinear features: the parameters stay far from the least-squares ones.
    assert float(torch.linalg.vector_norm(w - optimum.w)) > 1.0


def test_statistics_come_from_the_training_rows_only(tmp_path):
    # A crafted table: the held-out rows have a far larger feature; leakage would show.
    frame = pd.DataFrame({"x": np.r_[np.arange(80.0), np.full(20, 1000.0)], "y": np.arange(100.0)})
    path = tmp_path / "crafted.csv"
    frame.to_csv(path, index=False)
    data = load_table(str(path), "y", split={"val": 0.2, "test": 0.0, "seed": 3})
    train_x = data.X[:, 0].double()
    assert float(train_x.mean()) == pytest.approx(0.0, abs=1e-6)  # standardized on its own rows
    assert float(train_x.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    raw_train = data.X[:, 0].double() * data.scaling.x_scale[0] + data.scaling.x_mean[0]
    held_out = data.split.X_val[:, 0].double() * data.scaling.x_scale[0] + data.scaling.x_mean[0]
    assert data.scaling.x_mean[0] == pytest.approx(float(raw_train.mean()))
    assert sorted({round(float(v)) for v in raw_train} | {round(float(v)) for v in held_out}) == (
        sorted(set(frame["x"].round().astype(int)))
    )


def test_the_split_is_seeded_and_disjoint(tmp_path):
    path, frame = _houses(tmp_path)
    split = {"val": 0.25, "test": 0.1, "seed": 7}
    first = load_table(str(path), "price", ["size"], split=split, standardize=False)
    again = load_table(str(path), "price", ["size"], split=split, standardize=False)
    other = load_table(str(path), "price", ["size"], split={**split, "seed": 8}, standardize=False)
    assert torch.equal(first.split.X_val, again.split.X_val)
    assert not torch.equal(first.split.X_val, other.split.X_val)
    parts = [first.X, first.split.X_val, first.split.X_test]
    assert [p.shape[0] for p in parts] == [260, 100, 40]
    values = torch.cat(parts)[:, 0].double().numpy()
    np.testing.assert_allclose(np.sort(values), np.sort(frame["size"].to_numpy()), rtol=1e-6)


def test_original_units_give_the_same_predictions(tmp_path):
    path, frame = _houses(tmp_path, name="houses.parquet")
    data = load_table(str(path), "price", split=SPLIT, standardize_target=True)
    assert data.feature_names == ("size", "rooms")
    optimum = least_squares(data.X, data.y)
    w, b = data.scaling.original_units(optimum.w.double().numpy(), optimum.b)
    np.testing.assert_allclose(w, [3.0, 10.0], rtol=0.01)
    assert b == pytest.approx(50, abs=2.0)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "nope.csv", "no such file"),
        (lambda p: p, "a folder with no .parquet files"),
        (lambda p: (p / "x.json").write_text("{}") and p / "x.json", ".csv, .csv.gz"),
        (lambda p: (p / "e.csv").write_text("") == 0 and p / "e.csv", "the file is empty"),
        (lambda p: (p / "h.csv").write_text("a,price\n") and p / "h.csv", "the table is empty"),
        (
            lambda p: (p / "n.parquet").write_bytes(b"not parquet") and p / "n.parquet",
            "cannot read",
        ),
    ],
    ids=["missing", "directory", "not-a-table", "empty-file", "no-rows", "broken-parquet"],
)
def test_bad_files_are_one_line(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_table(str(make(tmp_path)), "price")


def test_bad_columns_and_values_name_them(tmp_path):
    path, frame = _houses(tmp_path)
    with pytest.raises(DataError, match="dataset.target=cost .*has size, rooms, city, price"):
        load_table(str(path), "cost")
    with pytest.raises(DataError, match=r"\['city'\] are not numeric"):
        load_table(str(path), "price", ["size", "city"])
    frame.loc[[3, 7], "size"] = np.nan
    frame.loc[9, "rooms"] = np.inf
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="3 of 400 rows have NaN, inf"):
        load_table(str(path), "price", ["size", "rooms"])
    dropped = load_table(str(path), "price", ["size", "rooms"], missing="drop")
    assert dropped.dropped_rows == 3 and dropped.X.shape[0] + dropped.split.X_val.shape[0] == 397
    constant = pd.DataFrame({"c": [1.0] * 10, "x": np.arange(10.0), "y": np.arange(10.0)})
    constant.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match=r"\['c'\] are constant"):
        load_table(str(tmp_path / "c.csv"), "y")
    few = pd.DataFrame({f"x{i}": np.arange(5.0) * i for i in range(1, 8)} | {"y": np.arange(5.0)})
    few.to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(DataError, match="more rows than features"):
        load_table(str(tmp_path / "few.csv"), "y", standardize=False)
    nested = pd.DataFrame({"x": [[1, 2], [3, 4]], "y": [1.0, 2.0]})
    nested.to_parquet(tmp_path / "nested.parquet")
    with pytest.raises(DataError, match="nested columns"):
        load_table(str(tmp_path / "nested.parquet"), "y")
    for split in ({"val": 0.6, "test": 0.4}, {"val": -0.1}, {"val": 1.5}):
        with pytest.raises(DataError, match="dataset.split"):
            load_table(str(path), "price", ["size"], "drop", split=split)


def test_the_default_synthetic_experiment_has_no_held_out_rows():
    data = make_synthetic_regression()
    assert data.split is None and data.X.shape == (1000, 3) and data.has_truth
    held = make_synthetic_regression(split={"val": 0.2, "test": 0.1, "seed": 1})
    assert held.X.shape[0] == 700 and held.split.X_val.shape[0] == 200


def test_a_table_run_logs_held_out_losses_and_its_dataset(store, tmp_path, capsys):
    path, _ = _houses(store.root)
    store.train_here(
        "dataset=table", f"dataset.path={path}", "dataset.target=price",
        "dataset.split.test=0.1", "trainer.epochs=20", "trainer.batch_size=16",
    )  # fmt: skip
    (run,) = store.runs()
    metrics = run.data.metrics
    assert {"train/loss", "val/loss", "test/loss", "error/lsq_l2", "optimum/loss"} <= set(metrics)
    assert "error/w_l2" not in metrics and "error/b_abs" not in metrics  # no truth to measure
    assert len(store.client.get_metric_history(run.info.run_id, "val/loss")) == 20
    contexts = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(contexts) == {"training", "validation", "test"}
    assert contexts["training"].name == "houses" and contexts["training"].source_type == "local"
    assert json.loads(contexts["training"].profile)["num_rows"] == 280
    local = store.client.download_artifacts(run.info.run_id, "parameters.json", str(tmp_path))
    report = json.loads(open(local).read())
    assert report["features"] == ["size", "rooms"] and "true" not in report
    assert report["units"].startswith("standardized")
    np.testing.assert_allclose(report["original_units"]["least_squares"]["w"], [3, 10], rtol=0.01)
    # The console shows the table's own units, says so, and names the intercept as no column.
    shown = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line.split("│")[2:4] for line in shown.splitlines()
            if line.startswith("│")}  # fmt: skip
    lsq = report["original_units"]["least_squares"]
    assert float(rows["size"][0]) == pytest.approx(lsq["w"][0], abs=1e-4)
    assert float(rows["rooms"][0]) == pytest.approx(lsq["w"][1], abs=1e-4)
    assert float(rows["(intercept)"][0]) == pytest.approx(lsq["b"], abs=1e-4)
    recovered = report["original_units"]["recovered"]
    assert float(rows["size"][1]) == pytest.approx(recovered["w"][0], abs=1e-4)
    assert "units: the table's own" in shown and "b" not in rows


@pytest.mark.slow
def test_a_sweep_on_real_data_ranks_by_validation_loss(store):
    store.command("-m", "dataset=diabetes", "optimizer.lr=0.001,0.03", "trainer.epochs=5")
    runs = store.runs()
    parent = next(r for r in runs if r.data.tags.get("linreg.sweep") == "true")
    children = [r for r in runs if r is not parent]
    best = min(children, key=lambda r: r.data.metrics["val/loss"])
    assert parent.data.tags["linreg.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val_loss"] == best.data.metrics["val/loss"]
    bad = store.command(
        "dataset=table", "dataset.path=missing.csv", "dataset.target=y", check=False
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "dataset.path" in bad.stderr and "missing.csv" in bad.stderr
    assert len(store.runs()) == len(runs)  # a bad table leaves no run


def test_parquet_read_in_batches_packs_what_pandas_would(tmp_path):
    """The Parquet reader streams row groups into one packed buffer; the result is the CSV
    path's (pandas, whole), whatever the row groups, with ints, bools, nulls and a wide
    range of magnitudes (a timestamp-like column keeps its precision once standardized)."""
    rng = np.random.default_rng(1)
    n = 5000
    frame = pd.DataFrame({
        "small": rng.normal(0, 1, n).astype(np.float32),
        "stamp": 1.7e9 + rng.integers(0, 1000, n).astype(np.float64),
        "count": pd.array(rng.integers(0, 9, n), dtype="Int64"),
        "flag": rng.random(n) > 0.5,
        "y": rng.normal(5, 2, n),
    })  # fmt: skip
    frame.loc[[7, 4000], "count"] = pd.NA
    frame.loc[123, "small"] = np.nan
    frame.to_parquet(tmp_path / "t.parquet", row_group_size=1500)
    frame.to_csv(tmp_path / "t.csv", index=False)
    split = {"val": 0.2, "test": 0.1, "seed": 5}
    whole = load_table(str(tmp_path / "t.csv"), "y", missing="drop", split=split)
    streamed = load_table(str(tmp_path / "t.parquet"), "y", missing="drop", split=split)
    assert whole.dropped_rows == streamed.dropped_rows == 3
    assert whole.X.shape == streamed.X.shape == (3498, 4)
    for a, b in [
        (whole.X, streamed.X),
        (whole.y, streamed.y),
        (whole.split.X_val, streamed.split.X_val),
        (whole.split.X_test, streamed.split.X_test),
    ]:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)  # fmt: skip
    # Standardized by the training rows: mean 0, std 1, the stamps' spread intact.
    np.testing.assert_allclose(streamed.X.double().mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(streamed.X.double().std(0, correction=0).numpy(), 1, atol=1e-5)
    kept = frame.dropna()
    train_stamps = np.sort(streamed.X[:, 1].double().numpy() * streamed.scaling.x_scale[1]
                           + streamed.scaling.x_mean[1])  # fmt: skip
    assert np.allclose(np.round(train_stamps) - train_stamps, 0, atol=1e-3)  # whole seconds
    assert set(np.round(train_stamps)) <= set(kept["stamp"])
    # One packed buffer: the engines read [X y] rows in place.
    from linreg_lab.data import packed_rows

    assert packed_rows(streamed.X, streamed.y) is not None


def test_a_folder_of_parquet_files_is_one_table(tmp_path, store):
    """A folder as pyarrow writes a dataset (several files, uneven row groups, a _SUCCESS
    marker, a file in a subfolder): the same rows, split and scaling as one file of them,
    trained by the command; files with other columns are refused in one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(50, 10, 2000), "b": rng.normal(0, 1, 2000)})
    frame["y"] = 2 * frame.a - 3 * frame.b + 1 + rng.normal(0, 0.1, 2000)
    folder = tmp_path / "events"
    (folder / "more").mkdir(parents=True)
    # Rows and row-group sizes; a folder's files are read in the order of their paths.
    cuts = [("more/part-0", 0, 100, 7), ("part-1", 100, 800, 300), ("part-2", 800, 2000, 512)]
    for name, lo, hi, groups in cuts:
        where = folder / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(frame[lo:hi], preserve_index=False), where,
                       row_group_size=groups)  # fmt: skip
    (folder / "_SUCCESS").write_text("")
    frame.to_parquet(tmp_path / "whole.parquet")
    split = {"val": 0.2, "test": 0.1, "seed": 1}
    whole = load_table(str(tmp_path / "whole.parquet"), "y", split=split)
    parts = load_table(str(folder), "y", split=split)
    assert parts.source.kind == "parquet" and parts.X.shape == whole.X.shape == (1400, 2)
    for a, b in [(whole.X, parts.X), (whole.y, parts.y), (whole.split.X_val, parts.split.X_val)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # float32: another shift
    store.command("dataset=table", f"dataset.path={folder}", "dataset.target=y",
                  "trainer.epochs=5", "optimizer.lr=0.05")  # fmt: skip
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and run.data.metrics["error/lsq_l2"] < 0.05
    pq.write_table(pa.table({"a": [1.0], "c": [2.0], "y": [3.0]}), folder / "part-9.parquet")
    with pytest.raises(DataError, match="part-9.parquet has other columns than part-0.parquet"):
        load_table(str(folder), "y")


def test_every_column_is_accounted_for(tmp_path, caplog):
    """Issue 27, item 3: no column dropped without a word; repeated names refused, CSV and
    Parquet alike; an empty or repeated feature list refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from linreg_lab.tables import TableError, load_table

    dup = tmp_path / "dup.csv"
    dup.write_text("x1,x1,y\n" + "".join(f"{i},{i + 1},{2 * i}\n" for i in range(20)))
    with pytest.raises(TableError, match=r"column names \['x1'\] appear more than once"):
        load_table(str(dup), "y")
    table = pa.table([pa.array(range(20)), pa.array(range(20)), pa.array(range(20))],
                     names=["x", "x", "y"])  # fmt: skip
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(TableError, match=r"column names \['x'\] appear more than once"):
        load_table(str(tmp_path / "dup.parquet"), "y")
    text = tmp_path / "text.csv"
    text.write_text("a,b,y\n" + "".join(f'{i},"1,{i}34.5",{i * 3}\n' for i in range(20)))
    with caplog.at_level("WARNING"):
        data = load_table(str(text), "y", split={"val": 0.2, "test": 0.0, "seed": 0})
    assert list(data.feature_names) == ["a"]
    assert "1 columns left out, not numeric: ['b']" in caplog.text
    with pytest.raises(TableError, match=r"dataset.features=\[\] is not allowed"):
        load_table(str(text), "y", features=[])
    with pytest.raises(TableError, match=r"\['a'\] named more than once"):
        load_table(str(text), "y", features=["a", "a"])
