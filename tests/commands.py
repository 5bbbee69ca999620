"""linreg-train's Hydra app on several command lines in one process, each as the command runs
it (same composition, checks, sweep and error lines; the exit code its SystemExit carries):
~0.2 s a command line instead of two processes' ~8 s of imports (the command's and its MLflow
helper's).

    python -m tests.commands < argvs.json > results.json   # [[args...], ...] -> [[code, out, err]]
    python -m tests.commands --serve   # one JSON request a line: {"args", "cwd", "env"}

--serve keeps one process and one MLflow helper for a test worker's whole session (conftest's
Store.command): each command line runs as linreg-train's run_command, then the helper writes
all it was sent before the reply. What the helper prints (a sweep's job lines and comparison)
is appended to the command's output. The command's own process behaviour (exit paths,
signals, its helper's lifetime) is tested through the real program."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile


@contextlib.contextmanager
def _fds_to(out_fd: int, err_fd: int):
    """fds 1 and 2 onto out_fd and err_fd, whatever writes there (Hydra, logging, print, a
    child process started meanwhile); restored after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def _captured():
    """fds 1 and 2 into files; yields a function that returns (out, err) so far."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:

        def read() -> tuple[str, str]:
            sys.stdout.flush()
            sys.stderr.flush()
            out.seek(0)
            err.seek(0)
            return out.read(), err.read()

        with _fds_to(out.fileno(), err.fileno()):
            yield read


def _status(code) -> int:
    """The exit status a SystemExit's code gives."""
    return code if isinstance(code, int) else (0 if code is None else 1)


def run(args: list[str]) -> tuple[int, str, str]:
    from linreg_lab.cli import train as command  # installs its signal handlers, as it does

    sys.argv = ["linreg-train", *args]
    with _captured() as read:
        code = 0
        try:
            command.train()
        except SystemExit as exit:
            code = _status(exit.code)
        out, err = read()
    return code, out, err


def serve() -> None:
    from linreg_lab.cli import train as command
    from linreg_lab.tracking import helper

    replies = os.fdopen(os.dup(1), "w")
    printed = tempfile.NamedTemporaryFile("a+", suffix=".helper.out")
    with _fds_to(printed.fileno(), printed.fileno()):  # the helper's own, for its whole life
        helper.helper()
    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request["cwd"])
        before = dict(os.environ)  # a command's environment ends with it (a sweep's said file)
        os.environ.update(request["env"])
        # PYTHONPATH as a new process would read it: on sys.path for this command only.
        added = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = added
        start = os.path.getsize(printed.name)
        sys.argv = ["linreg-train", *request["args"]]
        with _captured() as read:
            code = _status(command.run_command())
            try:
                helper.helper().call("sync", None)  # all it was sent is written (or failed)
            except Exception as error:  # a write that failed: the command's own end says so
                print(f"commands: the helper: {error}", file=sys.stderr)
            out, err = read()
        with open(printed.name) as said:
            said.seek(start)
            out += said.read()
        os.environ.clear()
        os.environ.update(before)
        del sys.path[: len(added)]
        replies.write(json.dumps([code, out, err]) + "\n")
        replies.flush()
    helper.close()


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    results = [run(args) for args in json.load(sys.stdin)]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
