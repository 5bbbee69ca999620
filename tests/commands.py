"""linreg-train's Hydra app on several command lines in one process, each as the command runs
it (same composition, checks and error lines; the exit code its SystemExit carries), for tests
of what bad input does: ~0.2 s a command line instead of a process's ~8 s of imports.

    python -m tests.commands < argvs.json > results.json   # [[args...], ...] -> [[code, out, err]]

The command's own exit path (linreg_lab.cli.train.main) is tested through the real program
(tests/test_failures.py)."""

from __future__ import annotations

import json
import os
import sys
import tempfile


def run(args: list[str]) -> tuple[int, str, str]:
    from linreg_lab.cli import train as command  # installs its signal handlers, as it does

    sys.argv = ["linreg-train", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)  # whatever writes there (Hydra, logging, print): captured
        os.dup2(err.fileno(), 2)
        code = 0
        try:
            command.train()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def main() -> None:
    results = [run(args) for args in json.load(sys.stdin)]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
