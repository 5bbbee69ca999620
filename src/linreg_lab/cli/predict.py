"""linreg-predict: a logged model's predictions on a file of new rows, without writing Python.

linreg-predict --best linreg new.csv                 # the registered model linreg@best
linreg-predict models:/m-<id> new.parquet -o out.csv # any model URI MLflow loads
linreg-predict runs:/<run id>/model new.csv          # a run's model

The input is CSV or Parquet (by its suffix) with the model's columns by name, in any order;
other columns are kept in the output and not used. The output (CSV or Parquet by its suffix;
CSV on stdout without -o) is the input with the prediction added, named after the target.
Errors are one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from linreg_lab.paths import DEFAULT_TRACKING_URI

PROGRAM = "linreg-predict"


class PredictError(Exception):
    """Something about the user's input, said in one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="a model URI (models:/..., runs:/.../model)")
    parser.add_argument("input", help="a CSV or Parquet file of rows to predict")
    parser.add_argument("--best", metavar="NAME", help="the registered model NAME@best")
    parser.add_argument("-o", "--output", type=Path, help="CSV or Parquet (default: CSV on stdout)")
    parser.add_argument(
        "--uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="tracking URI the model is in (default: $MLFLOW_TRACKING_URI or the project store)",
    )
    args = parser.parse_args(argv)
    if (args.model is None) == (args.best is None):
        parser.error("give a model URI or --best NAME (one of them)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        predict(args)
    except PredictError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def predict(args: argparse.Namespace) -> None:
    import pandas as pd

    rows = read_rows(Path(args.input))
    model = load(args.model or f"models:/{args.best}@best", args.uri)
    schema = model.metadata.get_input_schema()
    features = schema.input_names() if schema is not None else list(rows.columns)
    missing = [name for name in features if name not in rows.columns]
    if missing:
        raise PredictError(f"{args.input}: no column {', '.join(map(repr, missing))} "
                           f"(the model takes {', '.join(features)})")  # fmt: skip
    values = {}
    for name in features:
        column = pd.to_numeric(rows[name], errors="coerce")
        bad = column.isna() & rows[name].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise PredictError(f"{args.input}: column {name!r}, row {row + 1}: "
                               f"{rows[name].iloc[row]!r} is not a number")  # fmt: skip
        if column.isna().any():
            row = int(column.isna().to_numpy().nonzero()[0][0])
            raise PredictError(f"{args.input}: column {name!r}, row {row + 1}: empty")
        values[name] = column.astype("float64")
    try:
        predicted = model.predict(pd.DataFrame(values, index=rows.index))
    except Exception as error:
        raise PredictError(
            f"{args.input}: the model refused the rows: {_one_line(error)}"
        ) from None
    out = rows.copy()
    for name in predicted.columns:
        out[name if name not in out.columns else f"predicted_{name}"] = predicted[name]
    try:
        write_rows(out, args.output)
    except BrokenPipeError:  # `| head`: the reader has what it wanted; no error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except Exception as error:
        raise PredictError(f"-o {args.output}: cannot write it: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def read_rows(path: Path):
    import pandas as pd

    if not path.is_file():
        raise PredictError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            rows = pd.read_parquet(path)
        else:
            rows = pd.read_csv(path, keep_default_na=False, na_values=[""])  # "n/a": not a number
    except pd.errors.EmptyDataError:
        raise PredictError(f"{path}: the file is empty") from None
    except Exception as error:
        raise PredictError(f"{path}: cannot read it: {' '.join(str(error).split())}") from None
    if rows.empty:
        raise PredictError(f"{path}: no rows to predict")
    return rows


def load(uri: str, tracking_uri: str):
    """The pyfunc model at uri, from the store tracking_uri."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import warnings

    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mlflow.pyfunc.load_model(uri)
    except Exception as error:
        from linreg_lab.tracking.store import mask_secrets

        text = " ".join(str(error).split())[:300]
        where = mask_secrets(tracking_uri)
        raise PredictError(f"{uri}: cannot load this model from {where}: {text}") from None


def write_rows(rows, output: Path | None) -> None:
    if output is None:
        rows.to_csv(sys.stdout, index=False)
    elif output.suffix.lower() in (".parquet", ".pq"):
        rows.to_parquet(output, index=False)
    else:
        rows.to_csv(output, index=False)


if __name__ == "__main__":
    main()
