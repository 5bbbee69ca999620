"""Item 9: how fast the product fails or answers where a user waits on it (limits a test used
to assert with a clock): a dead tracking server, Ctrl-C on a run of many fast epochs, and
linreg-ui's start and memory."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
URL = re.compile(r"(http://127\.0\.0\.1:\d+/\S+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_server(folder: Path) -> float:
    """Seconds linreg-train takes to refuse a server that does not answer (README: ~5 s)."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "linreg-train"), "tracking=server", "tracking.uri=http://127.0.0.1:9"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    return time.perf_counter() - started


def ui(folder: Path) -> tuple[float, float]:
    """linreg-ui over a store with a run: seconds until it prints the runs page, MB its server
    holds."""
    from bench.end_to_end import Stores

    folder = Stores(folder).fresh()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    stop_s = ctrl_c(folder, env)  # its KILLED run is the store's run the UI shows
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(BIN / "linreg-ui"), "--port", str(_free_port())], cwd=folder, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=_ctrl_c_as_a_terminal,
    )  # fmt: skip
    try:
        for line in process.stdout:
            if URL.search(line):
                break
        start_s = time.perf_counter() - started
        server = psutil.Process(process.pid).children(recursive=True)
        rss_mb = sum(p.memory_info().rss for p in server) / 2**20
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    return start_s, rss_mb, stop_s


def ctrl_c(folder: Path, env: dict[str, str], after_s: float = 3.0) -> float:
    """Seconds from Ctrl-C to linreg-train's exit, on a run of many fast epochs (each epoch's
    metrics outpace the store's writes) stopped after_s seconds into its training."""
    import sqlite3

    process = subprocess.Popen(
        [str(BIN / "linreg-train"), "trainer.epochs=10000000"], cwd=folder, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_ctrl_c_as_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # training: the store has its first epoch
            time.sleep(0.2)
            try:
                with sqlite3.connect(folder / "mlflow.db") as db:
                    if db.execute("select count(*) from metrics").fetchone()[0]:
                        break
            except sqlite3.Error:
                pass
        time.sleep(after_s)
        started = time.perf_counter()
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=300)
        stopped_s = time.perf_counter() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 130 and "ends KILLED" in process.stderr.read(), code
    return stopped_s


def _ctrl_c_as_a_terminal() -> None:
    """`make bench &` starts us with SIGINT ignored, which exec passes on: the UI's own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def measure() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        dead_s = dead_server(Path(folder))
        start_s, rss_mb, stop_s = ui(Path(folder))
    return {"dead_server_s": dead_s, "ui_start_s": start_s, "ui_server_rss_mb": rss_mb,
            "ctrl_c_s": stop_s}  # fmt: skip


def print_rows(row: dict) -> None:
    print("9. where a user waits: a dead tracking server refused; linreg-ui's start")
    print(f"   dead server refused in {row['dead_server_s']:.1f} s (whole command)")
    print(f"   Ctrl-C on a run of many fast epochs: exited {row['ctrl_c_s']:.1f} s after it")
    print(f"   linreg-ui printed its runs page in {row['ui_start_s']:.1f} s; its server holds "
          f"{row['ui_server_rss_mb']:.0f} MB")  # fmt: skip
