"""Shared fixtures: a private MLflow store per test and the real command-line programs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

# A shell without job control starts background commands (`make test &`, a CI step in the
# background) with SIGINT ignored, and an ignored signal stays ignored across exec: the
# programs the tests press Ctrl-C on (linreg-ui, the bench's UI) would never see it. Tests
# start them as a terminal would: with Ctrl-C's default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _env(uri: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("LINREG_PARENT_RUN_ID", None)
    env.pop("LINREG_EXPERIMENT_ID", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def template_store(tmp_path_factory) -> Path:
    """An initialised sqlite store, built once: creating the schema costs seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


class Commands:
    """One `python -m tests.commands --serve` process for a test worker: linreg-train command
    lines run in it, one after the other, each as the command runs them."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def run(self, root: Path, args: list[str], env: dict[str, str]):
        import json

        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.commands", "--serve"], cwd=ROOT,
                env=_env(os.environ.get("MLFLOW_TRACKING_URI", "")), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
        request = {"args": list(args), "cwd": str(root), "env": env}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise AssertionError(f"tests.commands exited {self.process.wait()}: {args}")
        code, out, err = json.loads(reply)
        return subprocess.CompletedProcess(["linreg-train", *args], code, out, err)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=120)


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def commands():
    driver = Commands()
    yield driver
    driver.close()


class Store:
    """A sqlite store in a test's tmp_path, with the CLI pointed at it."""

    def __init__(self, root: Path, commands: Commands | None = None):
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self._commands = commands

    def command(self, *args: str, check: bool = True, **env: str):
        """linreg-train args as the command runs them, in this worker's tests.commands
        process (no imports to pay): for tests of what runs and sweeps record. What is about
        the process (exit paths, signals, launchers' workers) goes through train()."""
        assert self._commands is not None, "Store(root, commands): the commands fixture"
        result = self._commands.run(self.root, list(args), {"MLFLOW_TRACKING_URI": self.uri,
                                                            **env})  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"linreg-train {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            )
        return result

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def run(self, program: str, *args: str, check: bool = True, timeout: float = 300, **env):
        """Run .venv/bin/<program> args in the test folder; returns the CompletedProcess."""
        result = subprocess.run(
            [str(BIN / program), *args],
            cwd=self.root,
            env=_env(self.uri, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{program} {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            )
        return result

    def train(self, *args: str, **kwargs):
        return self.run("linreg-train", *args, **kwargs)

    def train_here(self, *overrides: str, **kwargs):
        """One run as linreg-train makes it, in this process: the config composed by Hydra's
        compose API from the project's conf/, run by the library's run_experiment (what the
        command calls). For tests of what a run records; the command's own behaviour (exit
        codes, signals, its output) is tested through the command."""
        from hydra import compose, initialize_config_dir

        from linreg_lab.experiment import run_experiment
        from linreg_lab.paths import CONF_DIR

        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"tracking.uri={self.uri}"])
        return run_experiment(cfg, list(overrides), **kwargs)

    def report(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """linreg-report in this process (its main(argv), as the command calls it), against
        this store; its exit code and output as a finished command's."""
        import contextlib
        import io

        from linreg_lab.cli.report import main

        out, err, code = io.StringIO(), io.StringIO(), 0
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = self.uri
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(list(args))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI")
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved
        result = subprocess.CompletedProcess(["linreg-report", *args], code, out.getvalue(),
                                             err.getvalue())  # fmt: skip
        if check and code != 0:
            raise AssertionError(f"linreg-report {' '.join(args)} exited {code}\n{err.getvalue()}")
        return result

    def runs(self, experiment: str = "linreg", filter_string: str = ""):
        experiment_ = self.client.get_experiment_by_name(experiment)
        assert experiment_ is not None, f"no experiment {experiment!r} in {self.uri}"
        return self.client.search_runs([experiment_.experiment_id], filter_string, max_results=1000)

    def all_runs(self):
        ids = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(ids, max_results=10000)


@pytest.fixture
def store(tmp_path, template_store, commands) -> Store:
    shutil.copy(template_store, tmp_path / "mlflow.db")
    return Store(tmp_path, commands)


@pytest.fixture
def fresh_store(tmp_path, commands) -> Store:
    """A store that does not exist yet: the first writer creates it."""
    return Store(tmp_path, commands)
