"""linreg-train: compose the config with Hydra, train, record in MLflow.

linreg-train                                   # the default experiment
linreg-train optimizer.lr=0.1 trainer.batch_size=32
linreg-train -m optimizer.lr=0.003,0.01,0.03,0.1 trainer.batch_size=10,32,100
linreg-train -m experiment=lr_batch_grid hydra/launcher=joblib
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from linreg_lab.config.schema import register_schemas
from linreg_lab.paths import CONF_DIR, PROJECT_ROOT
from linreg_lab.tracking import sweep

OmegaConf.register_new_resolver("linreg.root", lambda: str(PROJECT_ROOT), replace=True)
register_schemas()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def train(cfg: DictConfig) -> float:
    from linreg_lab import console
    from linreg_lab.cli.errors import exit_on_user_error
    from linreg_lab.experiment import run_experiment
    from linreg_lab.interrupts import Interrupted, exit_code_for
    from linreg_lab.tracking.run import FINISHED

    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep and sweep.in_worker_process():
        # Ctrl-C reaches the whole process group; the sweep's process decides and stops us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if in_sweep and sweep.stop_requested():
        print(f"[job {hydra_cfg.job.num}] not started: the sweep was interrupted", flush=True)
        sys.exit(130)
    # Unresolved: an override may hold an ${...} that names nothing (validation says so).
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    try:
        with exit_on_user_error():
            outcome = run_experiment(cfg, overrides, quiet=in_sweep)
    except (KeyboardInterrupt, Interrupted) as error:
        if in_sweep and sweep.in_worker_process():
            # A pool worker (joblib's) would take this exit for the job's result and wait for
            # the next job, while the sweep's process waits for it to end.
            _exit_now(exit_code_for(error), teardown=False)
        sys.exit(exit_code_for(error))  # the run already ended KILLED
    if in_sweep:
        console.job_line(f"job {hydra_cfg.job.num}: {' '.join(overrides)}", outcome)
    elif outcome.status != FINISHED:  # a diverged run: the run is complete, the training not
        sys.exit(1)
    return outcome.objective


# Arguments after which linreg-train trains nothing: no MLflow helper for them.
_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve",
                 "--shell-completion", "-sc"}  # fmt: skip


def main() -> None:
    if _NO_RUN_FLAGS.isdisjoint(sys.argv[1:]):
        from linreg_lab.tracking import service

        service.start()  # MLflow's imports run beside Hydra's and torch's
    try:
        train()
        code = 0
    except SystemExit as exit:
        code = exit.code
    _exit_now(code)


def _exit_now(code, teardown: bool = True) -> None:
    """Exit as sys.exit(code) would, minus the interpreter's teardown of torch, numba and
    matplotlib (~0.7 s that nobody waits for): exit handlers run, output is flushed.

    teardown=False: even when other threads run (a pool worker's), which the teardown stops.
    """
    if teardown and threading.active_count() > 1:  # e.g. joblib's executor: it must stop
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # the runs' ends and MLflow's helper are waited for here
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
