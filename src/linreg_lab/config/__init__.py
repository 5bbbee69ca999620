"""Typed config schemas and the value checks run before any MLflow run is created.

Importing it registers the `${linreg.root:}` resolver the project's YAML uses (the project's
folder), so a config composed with Hydra's compose API resolves outside linreg-train too.
"""

from omegaconf import OmegaConf

from linreg_lab.paths import PROJECT_ROOT

if not OmegaConf.has_resolver("linreg.root"):
    OmegaConf.register_new_resolver("linreg.root", lambda: str(PROJECT_ROOT))
