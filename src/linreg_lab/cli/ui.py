"""linreg-ui: MLflow's UI over the project store, on 127.0.0.1, with the runs page's link.

    linreg-ui                               # project store, latest experiment, port 5000 or free
    linreg-ui --experiment lr_batch_grid    # print that experiment's runs page
    linreg-ui --uri sqlite:////path/mlflow.db --port 5001
    linreg-ui --host 0.0.0.0                # reachable from the network: the UI has no login
    linreg-ui -- --allowed-hosts ui.lab     # anything after -- goes to `mlflow server`

It runs the real `mlflow server` with one worker and no job execution: answering in ~6 s and
~0.5 GB instead of 20-30 s and ~3 GB with MLflow's defaults. Ctrl-C stops it and its workers.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from linreg_lab.paths import DEFAULT_TRACKING_URI, MLRUNS_DIR
from linreg_lab.tracking import views

PROGRAM = "linreg-ui"
DEFAULT_PORT = 5000
DEFAULT_EXPERIMENT = "linreg"
START_TIMEOUT_S = 120  # a first start on a new sqlite store runs its migrations (~8 s) too
STOP_TIMEOUT_S = 10
# MLflow's defaults start a job executor and 4 workers: 20-30 s and ~3 GB before it answers.
SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


class UiError(RuntimeError):
    """A problem the user can fix: printed as one line, exit code 2."""


class Stop(BaseException):
    """SIGTERM or SIGHUP arrived: stop the server like Ctrl-C does."""


@dataclass(frozen=True)
class Page:
    """The runs page to open and why that experiment was chosen."""

    url: str
    experiment: str | None
    reason: str


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the arguments after `--` that go to `mlflow server` unchanged."""
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="MLflow's UI over the project's runs; prints the runs page's URL.",
        epilog="Arguments after -- are passed to `mlflow server`.",
    )
    parser.add_argument(
        "--uri", "--backend-store-uri", dest="uri",
        help="tracking store (default: $MLFLOW_TRACKING_URI, else the project store "
        f"{DEFAULT_TRACKING_URI}); an http(s) URI is a running server: its link is printed",
    )  # fmt: skip
    parser.add_argument(
        "--experiment", metavar="NAME",
        help="experiment whose runs page to print (default: the one with the latest run, "
        f"e.g. the latest sweep's; else {DEFAULT_EXPERIMENT!r})",
    )  # fmt: skip
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1: this machine only). The UI has no "
        "login: anyone who reaches it can read and delete runs",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=int,
        help=f"port (default {DEFAULT_PORT}, or a free one when {DEFAULT_PORT} is taken)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1,
        help="server worker processes (default 1; each costs ~0.3 GB and seconds to start)",
    )  # fmt: skip
    parser.add_argument(
        "--artifact-root", metavar="DIR",
        help="where artifacts of experiments created in the UI go (default: the store's "
        "artifacts/ folder, mlruns/artifacts for the project store)",
    )  # fmt: skip
    return parser.parse_args(argv), extra


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sys.exit(serve(args, extra))
    except UiError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def serve(args: argparse.Namespace, extra: list[str]) -> int:
    """Start the server, print the runs page, wait for Ctrl-C; returns the exit code."""
    uri = args.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        # A server already serves that store: nothing to start, only a link to print.
        page = runs_page(uri.rstrip("/"), args.experiment, shared=True)
        print(f"{page.url}\n  ({page.reason}; {uri} is a running server, nothing started)")
        return 0
    if args.workers < 1:
        raise UiError(f"--workers={args.workers}: needs at least 1")
    if not _is_loopback(args.host):
        print(
            f"{PROGRAM}: warning: --host {args.host} makes the UI reachable from other machines; "
            "it has no login: anyone who reaches it can read, change and delete runs",
            file=sys.stderr,
            flush=True,
        )
    port = choose_port(args.host, args.port)
    artifact_root = Path(args.artifact_root or default_artifact_root(uri)).resolve()
    base = f"http://{_url_host(args.host)}:{port}"
    log_path = Path(tempfile.gettempdir()) / f"linreg-ui-{port}.log"
    command = server_command(uri, args.host, port, args.workers, artifact_root, extra)
    print(f"Starting MLflow's UI over {uri} on {base} ... (log: {log_path})", flush=True)
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        # A session of its own: Ctrl-C reaches us only, and we stop the whole group in order.
        server = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENV},
            start_new_session=True,
        )
    handlers = _raise_stop_on(signal.SIGTERM, signal.SIGHUP)
    try:
        wait_until_healthy(base, server, log_path)
        page = runs_page(base, args.experiment)
        print(f"Ready in {time.monotonic() - started:.1f} s. {page.reason}:", flush=True)
        print(f"  {page.url}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        code = server.wait()
        print(f"{PROGRAM}: the MLflow server exited with code {code}; its log:", file=sys.stderr)
        print(_tail(log_path), file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stop):
        print("\nStopping the MLflow UI ...", flush=True)
        stop(server)
        print("Stopped.", flush=True)
        return 0
    finally:
        stop(server)  # a no-op once stopped; here for errors and the server's own exit
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def server_command(
    uri: str, host: str, port: int, workers: int, artifact_root: Path, extra: list[str]
) -> list[str]:
    """`mlflow server` over uri; runs' own file:// artifact URIs are served as they are."""
    mlflow = Path(sys.executable).with_name("mlflow")
    program = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    return [
        *program, "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", artifact_root.as_uri(),  # experiments created in the UI
        "--artifacts-destination", artifact_root.as_uri(),  # mlflow-artifacts:/ uploads
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
        *extra,
    ]  # fmt: skip


def default_artifact_root(uri: str) -> Path:
    """<folder of the sqlite file>/artifacts: mlruns/artifacts for the project store."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    return MLRUNS_DIR / "artifacts"


def choose_port(host: str, wanted: int | None) -> int:
    """wanted if given (an error if taken); else 5000, or a free port when 5000 is taken."""
    if wanted is not None:
        if not _can_bind(host, wanted):
            raise UiError(
                f"--port={wanted}: already in use on {host}; leave --port out for a free one"
            )
        return wanted
    if _can_bind(host, DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_healthy(base: str, server: subprocess.Popen, log_path: Path) -> None:
    """Poll /health until it answers OK; raise UiError if the server exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UiError(
                f"the MLflow server exited with code {server.returncode} before answering; "
                f"its log ({log_path}):\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise UiError(f"no answer from {base}/health after {START_TIMEOUT_S} s; log: {log_path}")


def runs_page(base: str, name: str | None, shared: bool = False) -> Page:
    """The runs page of experiment `name`, else of the experiment holding the latest run.
    shared: a server this command did not start, whose saved view is not rewritten."""
    experiments = [
        e for e in _api(base, "experiments/search", {"max_results": 1000}).get("experiments", [])
        if e.get("lifecycle_stage", "active") == "active"
    ]  # fmt: skip
    by_name = {e["name"]: e for e in experiments}
    if name is not None:
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none yet"
            return Page(
                f"{base}/#/experiments", None, f"no experiment {name!r} (there are: {known})"
            )
        return _page(base, by_name[name], f"experiment {name!r}", shared)
    latest = _latest_run(base, [e["experiment_id"] for e in experiments])
    if latest is not None:
        experiment = next(
            e for e in experiments if e["experiment_id"] == latest["info"]["experiment_id"]
        )
        tags = _tags(latest)
        is_sweep = "mlflow.parentRunId" in tags or tags.get("linreg.sweep") == "true"
        what = "latest sweep" if is_sweep else "latest run"
        return _page(base, experiment, f"experiment {experiment['name']!r} ({what})", shared)
    if DEFAULT_EXPERIMENT in by_name:
        return _page(
            base, by_name[DEFAULT_EXPERIMENT], f"experiment {DEFAULT_EXPERIMENT!r}", shared
        )
    return Page(f"{base}/#/experiments", None, "no runs yet (train some: make run)")


def _page(base: str, experiment: dict, reason: str, shared: bool = False) -> Page:
    """The experiment's runs table, opened on linreg-lab's saved view (tracking/views.py):
    the machine-learning view, the swept params and the losses as columns, parent and
    children flat. Where the view cannot be written, the plain machine-learning view."""
    experiment_id = experiment["experiment_id"]
    url = f"{base}/#/experiments/{experiment_id}/runs?"
    try:
        tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
        if shared and views.TAG in tags:  # a server this command did not start: theirs stays
            return Page(url + views.query(), experiment["name"], f"Runs of {reason}")
        _api(base, "experiments/set-experiment-tag", {
            "experiment_id": experiment_id, "key": views.TAG,
            "value": views.tag_value(_view_columns(base, experiment_id)),
        })  # fmt: skip
    except UiError:
        return Page(url + views.ML_VIEW, experiment["name"], f"Runs of {reason}")
    return Page(url + views.query(), experiment["name"], f"Runs of {reason}")


def _view_columns(base: str, experiment_id: str) -> list[str]:
    """Columns for the latest run's sweep (its swept keys), else for single runs."""
    latest = _latest_run(base, [experiment_id])
    if latest is None:
        return views.columns(None, set())
    tags = _tags(latest)
    parent_id = tags.get("mlflow.parentRunId")
    if tags.get("linreg.sweep") == "true":  # a parent whose children have not started yet
        parent_id = latest["info"]["run_id"]
    params = None
    if parent_id:
        body = {"experiment_ids": [experiment_id], "filter": f"attributes.run_id = '{parent_id}'"}
        parent = (_api(base, "runs/search", body).get("runs") or [{}])[0]
        found = {p["key"]: p["value"] for p in parent.get("data", {}).get("params", [])}
        params = views.swept_keys(found) or None
    metrics = {m["key"] for m in latest.get("data", {}).get("metrics", [])}
    return views.columns(params, metrics)


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}


def _latest_run(base: str, experiment_ids: list[str]) -> dict | None:
    if not experiment_ids:
        return None
    body = {
        "experiment_ids": experiment_ids,
        "max_results": 1,
        "order_by": ["attributes.start_time DESC"],
    }
    runs = _api(base, "runs/search", body).get("runs", [])
    return runs[0] if runs else None


def _api(base: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise UiError(f"{base}: {endpoint} failed ({getattr(error, 'reason', error)})") from None


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left: no orphan workers."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    # uvicorn's workers may outlive their parent for a moment; the group outlives them all.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(server.pid):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _raise_stop_on(*signums: int) -> dict:
    def handler(signum, frame):
        raise Stop(signal.Signals(signum).name)

    return {signum: signal.signal(signum, handler) for signum in signums}


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port left in TIME_WAIT by a previous UI counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """Where a browser on this machine reaches the server: 0.0.0.0 is not an address to open."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


if __name__ == "__main__":
    main()
