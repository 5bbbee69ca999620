"""MLflow tracking: the store, one run's records, sweeps' parent runs and their comparison."""
