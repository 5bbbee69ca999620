"""The model a run logs, as MLflow's "model from code": this file is stored with the model and
loaded by `mlflow.pyfunc.load_model`, `mlflow models predict` or `linreg-predict`, with numpy
and pandas only (no linreg-lab, no torch needed where it is used).

It is the run's recovered linear model in the table's own units: the weights of
parameters.json's original units (standardization folded in), applied to the raw columns by
name. Its artifact "linear" (a JSON file written by tracking/model.py) holds the feature
names, the weights, the intercept and the target's name (an artifact, not MLflow's model_config,
which MLflow would also log as the run's params).
"""

import json

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class LinearModel(PythonModel):
    """y = X[features] @ w + b, on a DataFrame's named columns (any order; others ignored)."""

    def load_context(self, context) -> None:
        with open(context.artifacts["linear"]) as file:
            config = json.load(file)
        self.features = [str(name) for name in config["features"]]
        self.w = np.asarray(config["w"], dtype=np.float64)
        self.b = float(config["b"])
        self.target = str(config["target"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input
        if not isinstance(frame, pd.DataFrame):  # an array: the features in their order
            frame = pd.DataFrame(np.asarray(frame, dtype=np.float64), columns=self.features)
        missing = [name for name in self.features if name not in frame.columns]
        if missing:
            raise ValueError(f"missing columns {missing}: the model takes {self.features}")
        values = _numbers(frame, self.features)
        return pd.DataFrame({self.target: values @ self.w + self.b}, index=frame.index)


def _numbers(frame: pd.DataFrame, features: list) -> np.ndarray:
    """The named columns as float64 (integers and booleans too); a value that is not a number
    is an error naming its column and row. (In both model files: each is loaded alone, where
    linreg-lab may not be installed.)"""
    out = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        column = pd.to_numeric(frame[name], errors="coerce")
        bad = column.isna() & frame[name].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"column {name!r}, row {row + 1}: {frame[name].iloc[row]!r} is not "
                             "a number")  # fmt: skip
        out[:, j] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


set_model(LinearModel())
