"""The model a run logs, as MLflow's "model from code": this file is stored with the model and
loaded by `mlflow.pyfunc.load_model`, `mlflow models predict` or `linreg-predict`, without
linreg-lab.

Its artifact "linear" (JSON, written by tracking/model.py) holds the feature names, the target's
name and either
- the run's recovered linear model in the table's own units (`w`, `b`: parameters.json's
  original units, standardization folded in), applied to the raw columns: numpy and pandas
  only, no torch; or
- the training rows' standardization (`scaling`), around a module of the user's own: its
  artifact "module" is the trained module as `torch.save` wrote it (a pickle: its class is
  imported by name, from the user's package, which MLflow puts on sys.path from the model's
  code/ folder when the run could bundle it). The columns are standardized as in training, the
  module maps them, and the target's standardization is undone.
(An artifact, not MLflow's model_config, which MLflow would also log as the run's params.)
"""

import json

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class TableModel(PythonModel):
    """The target from a DataFrame's named columns (any order; others ignored), in its units."""

    def load_context(self, context) -> None:
        with open(context.artifacts["linear"]) as file:
            config = json.load(file)
        self.features = [str(name) for name in config["features"]]
        self.target = str(config["target"])
        self.module = None
        if "module" in context.artifacts:
            import torch

            scaling = config.get("scaling") or {}
            d = len(self.features)
            self.x_mean = np.asarray(scaling.get("x_mean", np.zeros(d)), dtype=np.float64)
            self.x_scale = np.asarray(scaling.get("x_scale", np.ones(d)), dtype=np.float64)
            self.y_mean = float(scaling.get("y_mean", 0.0))
            self.y_scale = float(scaling.get("y_scale", 1.0))
            self.module = torch.load(context.artifacts["module"], map_location="cpu",
                                     weights_only=False)  # fmt: skip
            self.module.eval()
        else:
            self.w = np.asarray(config["w"], dtype=np.float64)
            self.b = float(config["b"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input
        if not isinstance(frame, pd.DataFrame):  # an array: the features in their order
            frame = pd.DataFrame(np.asarray(frame, dtype=np.float64), columns=self.features)
        missing = [name for name in self.features if name not in frame.columns]
        if missing:
            raise ValueError(f"missing columns {missing}: the model takes {self.features}")
        values = _numbers(frame, self.features)
        if self.module is None:
            y = values @ self.w + self.b
        else:
            y = self._module_output((values - self.x_mean) / self.x_scale)
            y = y * self.y_scale + self.y_mean
        return pd.DataFrame({self.target: y}, index=frame.index)

    def _module_output(self, values: np.ndarray) -> np.ndarray:
        import torch

        dtype = next(self.module.parameters(), torch.empty(0)).dtype
        with torch.no_grad():
            out = self.module(torch.as_tensor(values, dtype=dtype)).reshape(-1)
        return out.double().numpy()


def _numbers(frame: pd.DataFrame, features: list) -> np.ndarray:
    """The named columns as float64 (integers and booleans too); a value that is not a number
    is an error naming its column and row."""
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


set_model(TableModel())
