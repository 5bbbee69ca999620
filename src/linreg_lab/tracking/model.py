"""A run's model as a user uses it (runs in the MLflow helper), logged as an MLflow pyfunc from
code (pyfunc_model.py) with a signature that names the columns. A linear model: its recovered
weights in the table's own units (numpy and pandas only), so predictions equal
parameters.json's original-units weights applied to the raw columns. Any other model (a user's
own nn.Module): the trained module the run stored as its artifact module.pt, with the training
rows' standardization around it (torch, and the user's package, bundled as the model's code
when the run found it outside site-packages)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
MODULE_ARTIFACT = "module.pt"  # a model that is not linear, as torch.save wrote it
TAG_MODEL_URI = "linreg.model_uri"


def model_spec(report: dict) -> dict | None:
    """What the logged model holds, from the run's parameters.json (experiment.run): the
    recovered weights in the data's own units, the feature names (synthetic data's columns are
    x0..x{D-1}) and the target's name. A model that is not linear: the artifact holding its
    module, the standardization and the package to bundle; None if the run stored no module."""
    if "recovered" not in report:
        if not report.get("module"):
            return None
        d = len(report["least_squares"]["w"])
        return {"features": list(report.get("features") or [f"x{i}" for i in range(d)]),
                "module": report["module"], "scaling": report.get("scaling"),
                "code": report.get("code"), "target": report.get("target") or "y"}  # fmt: skip
    weights = report.get("original_units", report)["recovered"]
    w = [float(v) for v in weights["w"]]
    names = list(report.get("features") or [f"x{i}" for i in range(len(w))])
    return {"features": names, "w": w, "b": float(weights["b"]),
            "target": report.get("target") or "y"}  # fmt: skip


@contextmanager
def store_of(client):
    """MLflow's global tracking URI as client's, for the calls that read the global one
    (Model.log; a model version's models:/ source), restored after."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_model(client, run_id: str, spec: dict) -> str:
    """Log spec's model as the run's output (an MLflow LoggedModel named "model"); its URI,
    also the run's tag linreg.model_uri. pip_requirements are given, so MLflow does not infer
    them (seconds)."""
    import mlflow
    import mlflow.pyfunc
    import numpy
    import pandas
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    signature = ModelSignature(
        # Any, not double: MLflow's schema check refuses int64 for a double column (a CSV of
        # whole numbers); the model converts each named column to float64 itself and names a
        # column that is not numbers.
        inputs=Schema([ColSpec(AnyType(), name) for name in spec["features"]]),
        outputs=Schema([ColSpec("double", spec["target"])]),
    )
    requirements = [f"mlflow=={mlflow.__version__}", f"numpy=={numpy.__version__}",
                    f"pandas=={pandas.__version__}"]  # fmt: skip
    with store_of(client), warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        linear = os.path.join(folder, "linear.json")
        with open(linear, "w") as file:
            json.dump(spec, file)
        artifacts, extra = {"linear": linear}, {}
        if "module" in spec:  # the run's stored module, around it the standardization
            import torch

            artifacts["module"] = client.download_artifacts(run_id, spec["module"], folder)
            requirements.append(f"torch=={torch.__version__.split('+')[0]}")
            if spec.get("code") and os.path.exists(spec["code"]):
                extra["code_paths"] = [spec["code"]]
            elif spec.get("code"):  # moved or deleted since the run: loading needs it installed
                import logging

                logging.getLogger(__name__).warning(
                    "the model's package %s is gone: the model is logged without it (where it "
                    "is loaded, the package must be importable)", spec["code"])  # fmt: skip
        warnings.simplefilter("ignore", UserWarning)  # "no input example": the signature is ours
        info = Model.log(  # mlflow.pyfunc.log_model, on a run that is not the active one
            artifact_path=None,
            name="model",
            flavor=mlflow.pyfunc,
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            signature=signature,
            pip_requirements=requirements,
            run_id=run_id,
            **extra,
        )
    client.set_tag(run_id, TAG_MODEL_URI, info.model_uri)
    return info.model_uri
