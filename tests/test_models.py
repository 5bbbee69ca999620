"""The model a run logs is the model a user uses: raw columns in, the target's units out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import BIN, _env

pytestmark = pytest.mark.slow


def houses(path, rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Features on very different scales (~50, ~0.002, ~3000) and a target in its own units."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "a": rng.normal(50, 10, rows), "b": rng.normal(0.002, 0.0005, rows),
        "c": rng.normal(3000, 400, rows),
    })  # fmt: skip
    frame["price"] = (2 * frame.a + 8000 * frame.b + 0.01 * frame.c + 3
                      + rng.normal(0, 0.5, rows))  # fmt: skip
    frame.to_csv(path, index=False)
    return frame


def load(store, uri: str):
    """mlflow.pyfunc.load_model(uri) from the test's store (models:/ URIs name no store)."""
    import mlflow
    import mlflow.pyfunc

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store.uri)
    try:
        return mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(previous)


def test_the_logged_model_predicts_from_the_raw_table(store):
    from sklearn.linear_model import LinearRegression

    table = houses(store.root / "houses.csv")
    store.command("dataset=table", "dataset.path=houses.csv", "dataset.target=price",
                  "tracking.log_model=true", "trainer.epochs=40")  # fmt: skip
    (run,) = store.runs()
    uri = run.data.tags["linreg.model_uri"]
    model = load(store, uri)
    inputs = model.metadata.get_input_schema()
    assert inputs.input_names() == ["a", "b", "c"]
    # Any, not double: MLflow refuses int64 for double; the model takes numbers of any kind.
    assert [str(t) for t in inputs.input_types()] == ["Any"] * 3
    report = json.loads(open(store.client.download_artifacts(run.info.run_id, "parameters.json",
                                                             str(store.root))).read())  # fmt: skip
    w = np.array(report["original_units"]["recovered"]["w"])
    b = report["original_units"]["recovered"]["b"]
    new = table.sample(20, random_state=1)[["c", "price", "a", "b"]]  # any order, extra column
    new = new.assign(note="ignored")
    predicted = model.predict(new)["price"].to_numpy()
    assert predicted == pytest.approx(new[["a", "b", "c"]].to_numpy() @ w + b, rel=1e-9)
    # ...which is the least-squares fit of the training rows: scikit-learn's, to 1%
    sklearn = LinearRegression().fit(table[["a", "b", "c"]], table.price)  # (all rows: ~1%)
    assert predicted == pytest.approx(sklearn.predict(new[["a", "b", "c"]]), rel=0.01)
    assert abs(predicted - new.price).mean() < 2  # the target's units, not standardized ones
    with pytest.raises(Exception, match="b"):  # a missing column is named
        model.predict(new.drop(columns=["b"]))
    with pytest.raises(Exception, match="column 'a', row 2: 'x' is not a number"):
        model.predict(new.assign(a=["1"] + ["x"] * 19))
    # MLflow's own command, on a CSV of new rows, some of its columns whole numbers (int64)
    whole = new.drop(columns=["price", "note"]).round({"a": 0, "c": 0}).astype({"a": int, "c": int})
    whole.to_csv(store.root / "new.csv", index=False)
    predicted = whole[["a", "b", "c"]].to_numpy(dtype=float) @ w + b
    out = store.root / "predicted.json"
    result = subprocess.run(
        [str(BIN / "mlflow"), "models", "predict", "-m", uri, "-i", str(store.root / "new.csv"),
         "-t", "csv", "-o", str(out), "--env-manager", "local"],
        env=_env(store.uri), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(out.read_text())["predictions"]
    assert [row["price"] for row in answer] == pytest.approx(predicted, rel=1e-9)


def test_synthetic_data_names_its_columns_x0_to_xd(store):
    store.command("tracking.log_model=true", "trainer.epochs=2")
    (run,) = store.runs()
    model = load(store, run.data.tags["linreg.model_uri"])
    assert model.metadata.get_input_schema().input_names() == ["x0", "x1", "x2"]
    final = run.data.metrics
    w = [final[f"param/w_{i}"] for i in range(3)]
    rows = pd.DataFrame({"x0": [1.0, 0.0], "x1": [0.0, 2.0], "x2": [0.0, 0.0]})
    predicted = model.predict(rows)["y"].to_numpy()
    assert predicted == pytest.approx([w[0] + final["param/b"], 2 * w[1] + final["param/b"]])


def test_a_sweeps_best_model_is_registered_and_best_moves_only_when_better(store):
    client = store.client
    first = store.command("-m", "optimizer.lr=0.001,0.03", "trainer.epochs=1")
    (parent,) = [r for r in store.runs() if r.data.tags.get("linreg.sweep") == "true"]
    best_run = client.get_run(parent.data.tags["linreg.best_run_id"])
    version = client.get_model_version_by_alias("linreg", "best")  # the experiment's name
    assert str(version.version) == "1" and version.run_id == best_run.info.run_id
    assert not {"w", "b", "features"} & set(best_run.data.params)  # the model's own, not params
    assert "now models:/linreg@best" in first.stdout
    parent = client.get_run(parent.info.run_id)  # as it ended
    assert parent.data.tags["linreg.best_model"] == "models:/linreg/1"
    model = load(store, "models:/linreg@best")
    final = best_run.data.metrics
    rows = pd.DataFrame({"x0": [1.0], "x1": [1.0], "x2": [1.0]})
    expected = sum(final[f"param/w_{i}"] for i in range(3)) + final["param/b"]
    assert model.predict(rows)["y"].to_numpy() == pytest.approx([expected])
    # A worse sweep registers its best too, and @best stays where it is, saying why
    worse = store.command("-m", "optimizer.lr=0.001,0.002", "trainer.epochs=1")
    assert str(client.get_model_version_by_alias("linreg", "best").version) == "1"
    assert "@best stays on version 1" in worse.stdout
    assert len(client.search_model_versions("name='linreg'")) == 2
    # A better one moves it; the parent's description says so
    store.command("-m", "optimizer.lr=0.03", "trainer.epochs=3")
    moved = client.get_model_version_by_alias("linreg", "best")
    assert str(moved.version) == "3" and moved.tags["linreg.metric"] == "train/loss"
    latest = max((r for r in store.runs() if r.data.tags.get("linreg.sweep") == "true"),
                 key=lambda r: r.info.start_time)  # fmt: skip
    assert "better than version 1" in latest.data.tags["mlflow.note.content"]
    assert latest.data.tags["linreg.best_model"] == "models:/linreg/3"
    # Other data is not compared: a version, and @best stays
    other = store.command("-m", "optimizer.lr=0.03", "trainer.epochs=3", "dataset.seed=7")
    assert "not comparable" in other.stdout
    assert str(client.get_model_version_by_alias("linreg", "best").version) == "3"
    # Switched off: no version
    store.command("-m", "optimizer.lr=0.05", "trainer.epochs=1", "tracking.register_best=false")
    assert len(client.search_model_versions("name='linreg'")) == 4


def predict_here(store, *args: str) -> tuple[int, str, str]:
    """linreg-predict's main(argv) in this process, against the test's store."""
    import contextlib
    import io

    from linreg_lab.cli.predict import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--uri", store.uri, *args])
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue(), err.getvalue()


def test_linreg_predict_writes_predictions_and_refuses_bad_rows_in_one_line(store):
    table = houses(store.root / "houses.csv")
    store.command("-m", "dataset=table", "dataset.path=houses.csv", "dataset.target=price",
                  "optimizer.lr=0.01,0.03", "trainer.epochs=20")  # fmt: skip
    new = table.drop(columns=["price"]).head(5)[["c", "a", "b"]].assign(id=range(5))
    new.to_csv(store.root / "new.csv", index=False)
    new.to_parquet(store.root / "new.parquet", index=False)
    out = store.root / "out.csv"
    result = subprocess.run(  # the command itself, once
        [str(BIN / "linreg-predict"), "--best", "linreg", "new.csv", "-o", str(out)],
        cwd=store.root, env=_env(store.uri), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(out)
    assert list(written.columns) == ["c", "a", "b", "id", "price"]  # input kept, price added
    expected = load(store, "models:/linreg@best").predict(new)["price"]
    assert written["price"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-12)
    code, shown, _ = predict_here(store, "--best", "linreg", str(store.root / "new.parquet"))
    assert code in (0, None) and "price" in shown.splitlines()[0]
    bad_text = new.astype({"b": object})
    bad_text.loc[2, "b"] = "n/a"
    bad_text.to_csv(store.root / "text.csv", index=False)
    new.drop(columns=["a"]).to_csv(store.root / "missing.csv", index=False)
    (store.root / "empty.csv").write_text("")
    for args, says in [
        (["--best", "linreg", str(store.root / "missing.csv")], "no column 'a'"),
        (["--best", "linreg", str(store.root / "text.csv")], "column 'b', row 3: 'n/a'"),
        (["--best", "linreg", str(store.root / "empty.csv")], "the file is empty"),
        (["models:/nosuch/1", str(store.root / "new.csv")], "models:/nosuch/1: cannot load"),
        (["--best", "linreg", str(store.root / "absent.csv")], "no such file"),
    ]:
        code, _, err = predict_here(store, *args)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and says in lines[0], (args, err)
        assert lines[0].startswith("linreg-predict: error:")


EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example"


def test_a_users_own_package_and_config_dir_run_a_sweep_and_its_model(store):
    """docs/example: mylab.data.load_sales (a DataFrame) through myconf/dataset/sales.yaml,
    declared with LINREG_TARGETS; a sweep to its end, its best model predicting revenue."""
    from sklearn.linear_model import LinearRegression

    args = ["-m", "--config-dir", str(EXAMPLE / "myconf"), "dataset=sales",
            "optimizer.lr=0.01,0.03", "trainer.epochs=30"]  # fmt: skip
    refused = store.train(*args, check=False, PYTHONPATH=str(EXAMPLE))
    (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
    assert refused.returncode == 2 and "dataset.frame._target_=mylab.data.load_sales" in line
    assert "LINREG_TARGETS" in line  # says how to declare it
    store.train(*args, PYTHONPATH=str(EXAMPLE), LINREG_TARGETS="mylab")
    runs = store.runs()
    (parent,) = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    assert parent.info.status == "FINISHED"
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 2
    assert "comparison.csv" in {a.path for a in store.client.list_artifacts(parent.info.run_id)}
    import sys

    sys.path.insert(0, str(EXAMPLE))
    try:
        from mylab.data import load_sales
    finally:
        sys.path.remove(str(EXAMPLE))
    table = load_sales()
    features = ["price", "advertising", "temperature"]
    model = load(store, "models:/linreg@best")
    assert model.metadata.get_input_schema().input_names() == features
    predicted = model.predict(table)["revenue"].to_numpy()
    sklearn = LinearRegression().fit(table[features], table.revenue).predict(table[features])
    assert predicted == pytest.approx(sklearn, rel=0.01)


def _predict_elsewhere(store, uri: str, table: pd.DataFrame, folder: Path) -> np.ndarray:
    """uri's predictions on table, from a new Python process without the user's package on
    its path (the model carries it)."""
    rows, out = folder / "rows.csv", folder / "predicted.csv"
    table.to_csv(rows, index=False)
    code = ("import sys, mlflow, mlflow.pyfunc, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]);"
            "m = mlflow.pyfunc.load_model(sys.argv[2]);"
            "m.predict(pd.read_csv(sys.argv[3])).to_csv(sys.argv[4], index=False)")  # fmt: skip
    env = {k: v for k, v in _env(store.uri).items() if k != "PYTHONPATH"}
    command = [str(BIN / "python"), "-c", code, store.uri, uri, str(rows), str(out)]
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out)["revenue"].to_numpy()


def _sales():
    import sys

    sys.path.insert(0, str(EXAMPLE))
    try:
        from mylab.data import load_sales
    finally:
        sys.path.remove(str(EXAMPLE))
    return load_sales()


def _mixed_loss(store, run, table, predicted) -> None:
    """predicted (in revenue's units, on every row) is the run's model: its squared error over
    the table is the rows' mix of the run's last train/loss and val/loss (features standardized,
    target not: the losses are in revenue's units too)."""
    train, val = run.data.metrics["train/loss"], run.data.metrics["val/loss"]
    mse = float(np.mean((predicted - table.revenue.to_numpy()) ** 2))
    assert min(train, val) * 0.999 <= mse <= max(train, val) * 1.001
    assert mse == pytest.approx(0.8 * train + 0.2 * val, rel=0.01)  # the 80/20 split


def test_a_users_own_model_trains_with_autograd_and_logs_its_losses(store, tmp_path):
    """docs/example's mylab.models.Poly (not one nn.Linear) through myconf/model/poly.yaml;
    tracking.log_model=true logs it (the module, its standardization, the package mylab)."""
    result = store.train(
        "--config-dir",
        str(EXAMPLE / "myconf"),
        "model=poly",
        "dataset=sales",
        "trainer.epochs=3",
        "tracking.log_model=true",
        PYTHONPATH=str(EXAMPLE),
        LINREG_TARGETS="mylab",
    )
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and run.data.tags["linreg.engine"] == "autograd"
    assert "model Poly" in result.stdout and "best linear fit" in result.stdout
    assert not [key for key in run.data.metrics if key.startswith("param/")]  # nothing to show
    for key in ("train/loss", "val/loss", "error/excess_loss"):
        history = store.client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    report = json.loads(open(store.client.download_artifacts(run.info.run_id, "parameters.json",
                                                             str(store.root))).read())  # fmt: skip
    assert report["model"] == "mylab.models.Poly" and report["parameters"] == 7
    assert "recovered" not in report and len(report["least_squares"]["w"]) == 3
    table = _sales()
    uri = run.data.tags["linreg.model_uri"]
    assert load(store, uri).metadata.get_input_schema().input_names() == [
        "price", "advertising", "temperature"]  # fmt: skip
    _mixed_loss(store, run, table, _predict_elsewhere(store, uri, table, tmp_path))


def test_a_sweeps_best_model_of_the_users_own_is_registered(store, tmp_path):
    """A sweep of mylab.models.Poly: its best job's module registered as models:/linreg@best,
    which predicts in a process that never saw mylab."""
    store.command("-m", "--config-dir", str(EXAMPLE / "myconf"), "model=poly", "dataset=sales",
                  "optimizer.lr=0.01,0.03", "trainer.epochs=3",
                  PYTHONPATH=str(EXAMPLE), LINREG_TARGETS="mylab")  # fmt: skip
    runs = store.runs()
    (parent,) = [r for r in runs if r.data.tags.get("linreg.sweep") == "true"]
    best = store.client.get_run(parent.data.tags["linreg.best_run_id"])
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert best.data.metrics["val/loss"] == min(r.data.metrics["val/loss"] for r in jobs)
    version = store.client.get_model_version_by_alias("linreg", "best")
    assert version.run_id == best.info.run_id
    table = _sales()
    _mixed_loss(store, best, table, _predict_elsewhere(store, "models:/linreg@best", table,
                                                       tmp_path))  # fmt: skip


def test_a_module_that_cannot_be_saved_finishes_its_run_without_a_model(store, tmp_path):
    """torch.save cannot pickle a lambda: the run still ends FINISHED, says why it logs no
    model, and stores no module.pt."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "lambda.yaml").write_text(
        "_target_: linreg_lab.model.as_made\nmodule:\n  _target_: tests.own_models.WithLambda\n"
        "  in_features: ???\n"
    )
    result = store.command("--config-dir", str(tmp_path / "conf"), "model=lambda",
                           "trainer.epochs=2", "tracking.log_model=true",
                           LINREG_TARGETS="tests")  # fmt: skip
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and "linreg.model_uri" not in run.data.tags
    assert "WithLambda cannot be saved" in result.stdout + result.stderr
    paths = {a.path for a in store.client.list_artifacts(run.info.run_id)}
    assert "parameters.json" in paths and "module.pt" not in paths
    report = json.loads(open(store.client.download_artifacts(run.info.run_id, "parameters.json",
                                                             str(tmp_path))).read())  # fmt: skip
    assert "module" not in report and report["model"] == "tests.own_models.WithLambda"
