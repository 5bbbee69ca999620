"""Names of this project's runs in MLflow: tag keys and statuses (importing this costs nothing)."""

# MLflow's RunStatus names, without importing mlflow.
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"

# Who owns a RUNNING run, so runs orphaned by SIGKILL can be found later.
TAG_PID, TAG_HOST = "linreg.pid", "linreg.host"
TAG_FAILURE = "linreg.failure"  # why a run ended FAILED or KILLED
TAG_SWEEP = "linreg.sweep"  # "true" on a sweep's parent run
