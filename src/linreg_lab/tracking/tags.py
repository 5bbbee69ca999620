"""Names of this project's runs in MLflow: tag keys and statuses (importing this costs nothing)."""

import os

# MLflow's RunStatus names, without importing mlflow.
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
# Not an MLflow status: how the comparison shows a KILLED run that a sweeper's pruner stopped
# (its tag TAG_PRUNED holds the last epoch it trained).
PRUNED = "PRUNED"
TAG_PRUNED = "linreg.pruned"

# Who owns a RUNNING run, so runs orphaned by SIGKILL can be found later.
TAG_PID, TAG_HOST = "linreg.pid", "linreg.host"
TAG_SLURM_JOB = "linreg.slurm_job"  # the SLURM job (array_task) a run was trained in
TAG_USER = "linreg.user"  # who trained it: only their own SLURM jobs are asked after
TAG_FAILURE = "linreg.failure"  # why a run ended FAILED or KILLED
TAG_SWEEP = "linreg.sweep"  # "true" on a sweep's parent run


def slurm_job_id() -> str | None:
    """This process's SLURM job as squeue names it (array job_task), None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None
