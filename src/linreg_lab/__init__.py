"""linreg-lab: Hydra-configured linear regression experiments in PyTorch, tracked in MLflow."""

__version__ = "0.1.0"
