"""linreg-train: compose the config with Hydra, train, record in MLflow.

linreg-train                                   # the default experiment
linreg-train optimizer.lr=0.1 trainer.batch_size=32
linreg-train -m optimizer.lr=0.003,0.01,0.03,0.1 trainer.batch_size=10,32,100
linreg-train -m experiment=lr_batch_grid hydra/launcher=joblib
"""

from __future__ import annotations

import math
import os
import sys
import threading

from linreg_lab import signals

# Before anything slow is imported: a Ctrl-C during start-up is a stop request, not a traceback.
signals.record_signals()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import linreg_lab.config  # noqa: E402, F401  # registers ${linreg.root:}
from linreg_lab.paths import CONF_DIR  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def train(cfg: DictConfig) -> float:
    from linreg_lab import build, console, sweep
    from linreg_lab.config.errors import exit_on_user_error
    from linreg_lab.engines.monitor import RankFailed
    from linreg_lab.experiment import run_experiment
    from linreg_lab.tracking import FINISHED, KILLED

    hydra_cfg = HydraConfig.get()
    _paths_from_where_the_user_stands(cfg)
    with exit_on_user_error():
        job = sweep.job(build.tracking(cfg)) if hydra_cfg.mode.name == "MULTIRUN" else None
    if job is not None and not job.in_sweep_process:
        # Ctrl-C reaches the whole process group; the sweep's process decides and stops us.
        signals.ignore(signals.signal.SIGINT)
    if signals.stop_requested():  # before the run exists: nothing to record
        if job is not None:
            console.say(f"[job {hydra_cfg.job.num}] not started: the sweep was interrupted")
        if job is None or job.in_sweep_process:
            sys.exit(128 + (signals.received() or signals.signal.SIGTERM))
        return math.inf
    # Unresolved: an override may hold an ${...} that names nothing (validation says so).
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    plain = None  # the resolved config: a sweep's job needs it (its key, its configuration's)
    if job is not None:
        with exit_on_user_error():
            plain = build.plain_config(cfg)
    if job is not None and not OmegaConf.select(cfg, "sweep.rerun_finished", default=False):
        from linreg_lab.tracking.params import job_key

        with exit_on_user_error():
            done = sweep.finished_run(job_key(plain))
        if done is not None:  # a re-run sweep: this job finished before
            sweep.note_reused(done[0])
            console.say(
                f"[job {hydra_cfg.job.num}: {' '.join(overrides)}] FINISHED before, in run "
                f"{done[0]}: skipped (sweep.rerun_finished=true trains it again)"
            )
            return sweep.job_value(done[1], plain)
    arguments = job.run_arguments() if job is not None else {}
    # The run and its folder point at each other: .hydra/, the job's log, the outputs.
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None)
    arguments["tags"] = {}
    if output_dir:
        arguments["tags"]["linreg.output_dir"] = os.path.abspath(str(output_dir))
    trial = OmegaConf.select(cfg, "sweep.trial", default=None)
    if job is not None and trial is not None:  # a job of hydra/sweeper=optuna: its trial
        from linreg_lab.sweep.study import TAG_TRIAL, trial_reporter

        arguments["tags"][TAG_TRIAL] = str(trial)
        arguments["on_epoch"] = trial_reporter(int(trial), int(cfg.trainer.epochs))
    try:
        with exit_on_user_error():
            outcome = run_experiment(
                cfg, overrides, quiet=job is not None, plain=plain, **arguments
            )
    except signals.Interrupted as error:  # the run ended KILLED
        if job is not None and not job.in_sweep_process:
            return math.inf  # a worker: its sweep's process decides how the sweep ends
        if job is None:  # said at once: what the store still has to write may take a moment
            console.say(f"linreg-train: {error}: the run ends KILLED, with every epoch it "
                        "trained", file=sys.stderr)  # fmt: skip
        sys.exit(error.exit_code)
    except RankFailed as error:  # the ranks lost each other before rank 0's run existed
        console.say(f"linreg-train: {error}", file=sys.stderr)  # (joining, the first pass)
        sys.exit(1)
    if outcome is None:  # a rank other than 0 of a job's ranks: rank 0's run says it all
        return math.inf
    if job is not None:
        console.job_line(f"job {hydra_cfg.job.num}: {' '.join(overrides)}", outcome)
        if outcome.status == KILLED:  # pruned (its sweeper knows): not a replicate's value
            return math.inf
        return sweep.job_value(outcome.objective, plain)
    if outcome.status != FINISHED:  # a diverged run: the run is complete, the training not
        sys.exit(1)
    return outcome.objective


def _paths_from_where_the_user_stands(cfg: DictConfig) -> None:
    """Relative store paths name files from where the user started the command, also in a job
    that Hydra runs in its own folder (hydra.job.chdir=true)."""
    from hydra.utils import to_absolute_path
    from omegaconf import open_dict

    uri = OmegaConf.select(cfg, "tracking.uri", default=None)
    location = OmegaConf.select(cfg, "tracking.artifact_location", default=None)
    with open_dict(cfg):
        if isinstance(uri, str) and uri.startswith("sqlite:///") and uri[10:11] != "/":
            cfg.tracking.uri = "sqlite:///" + to_absolute_path(uri.removeprefix("sqlite:///"))
        elif isinstance(uri, str):  # resolved once: each later read re-parses ${oc.env:...}
            cfg.tracking.uri = uri
        if isinstance(location, str) and location and "://" not in location:
            cfg.tracking.artifact_location = to_absolute_path(location)
        path = OmegaConf.select(cfg, "dataset.path", default=None)
        if isinstance(path, str) and path not in ("", "???"):
            cfg.dataset.path = to_absolute_path(os.path.expanduser(path))


# Arguments after which linreg-train trains nothing: no MLflow helper for them.
_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve",
                 "--shell-completion", "-sc"}  # fmt: skip


def main() -> None:
    from linreg_lab.tracking import helper

    if _NO_RUN_FLAGS.isdisjoint(sys.argv[1:]):
        helper.helper()  # first: MLflow's imports run beside Hydra's and torch's
    code = run_command()
    helper.close()  # this process owns the helper: its writes end before the command does
    received = signals.received()
    if received is not None and code in (0, 1, None):  # launchers turn a stop into an error
        code = 128 + received
    _exit(code)


def run_command():
    """linreg-train on sys.argv, its sweep ended whatever ended the command: the exit code
    (as SystemExit carries it). The MLflow helper stays open: its owner (main) closes it."""
    try:
        train()
        code = 0
    except SystemExit as exit:
        code = exit.code
    # This process owns the sweep: end it, whatever ended the command.
    from linreg_lab import sweep
    from linreg_lab.config.errors import exit_on_user_error

    try:
        with exit_on_user_error():
            sweep.finish("the sweep stopped before its end")
    except SystemExit as exit:  # the store failed: one line, exit 2 (unless already failing)
        code = exit.code if code in (0, None) else code
    return code


def _exit(code) -> None:
    """Exit as sys.exit(code) would, minus the interpreter's teardown of torch, numba and
    matplotlib (~0.7 s that nobody waits for): everything of ours has ended by now.

    With other threads running (joblib's executor) the teardown stops them: sys.exit then.
    """
    if threading.active_count() > 1:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
