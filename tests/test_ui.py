"""linreg-ui: the real MLflow server on loopback, the runs page's link, Ctrl-C, a real browser.

The browser test drives Debian's Chromium (apt-get install chromium) through playwright; it
skips where that browser is missing. Set LINREG_UI_SCREENSHOTS=DIR to keep its screenshots
(docs/ui-runs.png and docs/ui-plots.png were made so).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from linreg_lab.cli.ui import DEFAULT_PORT, choose_port

BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
URL = re.compile(r"(http://\S+)")


class Ui:
    """linreg-ui in a process group of its own, as a terminal runs it; reads what it prints."""

    def __init__(self, uri: str, *args: str):
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.process = subprocess.Popen(
            [str(BIN / "linreg-ui"), "--uri", uri, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_url(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            if line.startswith("  http") and (match := URL.search(line)):
                return match.group(1)
        raise AssertionError("linreg-ui printed no runs URL:\n" + "".join(self.output))

    def ctrl_c(self, timeout: float = 30) -> int:
        """SIGINT to the process group, as a terminal's Ctrl-C; returns the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        for child in psutil.Process(self.process.pid).children(recursive=True):
            child.kill()
        self.process.kill()
        self.process.wait()


@pytest.fixture
def ui_factory():
    started: list[Ui] = []

    def start(uri: str, *args: str) -> Ui:
        ui = Ui(uri, *args)
        started.append(ui)
        return ui

    yield start
    for ui in started:
        if ui.process.poll() is None:
            ui.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def experiment_id(store, name: str) -> str:
    return store.client.get_experiment_by_name(name).experiment_id


@pytest.mark.slow
def test_ui_serves_loopback_only_prints_the_runs_page_and_stops_on_ctrl_c(store, ui_factory):
    store.train("trainer.epochs=1")
    port = free_port()
    ui = ui_factory(store.uri, "--port", str(port))
    url = ui.wait_for_url()  # how soon, and the server's memory: make bench (item 9, limits)
    expected = experiment_id(store, "linreg")
    assert url == (
        f"http://127.0.0.1:{port}/#/experiments/{expected}/runs"
        "?viewStateShareKey=linreg&workflowType=machine_learning"
    )
    # The saved view the link opens: a single run's usual columns, its metrics.
    view = json.loads(store.client.get_experiment(expected).tags["mlflow.sharedViewState.linreg"])
    columns = json.loads(view["state"])["selectedColumns"]
    assert columns == [
        "attributes.`Dataset`", "params.`optimizer.lr`", "params.`trainer.batch_size`",
        "metrics.`train/loss`", "metrics.`error/w_l2`",
    ]  # fmt: skip
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        assert response.status == 200

    # Every listening socket of the server's processes is on 127.0.0.1: nothing else reaches it.
    server = psutil.Process(ui.process.pid).children(recursive=True)
    assert server, "linreg-ui started no server process"
    listening = [
        c.laddr for p in server for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN
    ]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening

    # An http URI is a running server: linreg-ui prints its link and starts nothing.
    linked = subprocess.run(
        [str(BIN / "linreg-ui"), "--uri", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert linked.returncode == 0, linked.stderr
    assert url in linked.stdout

    assert ui.ctrl_c() == 0
    gone, alive = psutil.wait_procs(server, timeout=10)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_taken_port_is_an_error_and_a_network_host_warns(tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "linreg-ui"), "--uri", f"sqlite:///{tmp_path}/mlflow.db",
             "--host", "0.0.0.0", "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 2
    assert "no login" in result.stderr  # the warning comes first
    assert f"--port={port}: already in use" in result.stderr
    assert not (tmp_path / "mlflow.db").exists(), "no server should have started"


def test_default_port_taken_gives_a_free_port():
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", DEFAULT_PORT))
        holder.listen()
    except OSError:
        pass  # something already listens on 5000: the same situation
    try:
        port = choose_port("127.0.0.1", None)
        assert port != DEFAULT_PORT
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
    finally:
        holder.close()


def _chromium_or_skip():
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (Debian) to run this test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is missing: .venv/bin/pip install -c constraints.txt -e '.[dev]'")
    return sync_playwright


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    if keep := os.environ.get("LINREG_UI_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


@pytest.mark.slow
def test_browser_shows_a_sweep_its_losses_and_plots(store, ui_factory, tmp_path):
    sync_playwright = _chromium_or_skip()
    store.train("-m", "optimizer.lr=0.01,0.1", "trainer.epochs=2", "tracking.plots_per_job=true")
    runs = store.runs()
    parent = next(r for r in runs if r.data.tags.get("linreg.sweep") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2

    ui = ui_factory(store.uri, "--port", str(free_port()))
    url = ui.wait_for_url()
    assert url.endswith(
        f"/#/experiments/{parent.info.experiment_id}/runs"
        "?viewStateShareKey=linreg&workflowType=machine_learning"
    )
    assert "latest sweep" in "".join(ui.output)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # A fresh profile (no saved preference), the printed link, and no click: the
            # machine-learning view's runs table, its saved view's columns, parent and children.
            page = browser.new_page(viewport={"width": 1900, "height": 620})
            page.set_default_timeout(30_000)
            page.goto(url)
            name_cells = page.locator("[role=gridcell][col-id='attributes.`Run Name`']")
            for run in (parent, *children):
                name_cells.filter(has_text=run.info.run_name).first.wait_for()
            headers = page.locator("[role=columnheader][col-id]")
            page.locator("[role=columnheader][col-id='metrics.`error/w_l2`']").wait_for()
            shown_columns = set(headers.evaluate_all("hs => hs.map(h => h.getAttribute('col-id'))"))
            wanted = {"params.`optimizer.lr`", "metrics.`train/loss`", "metrics.`error/w_l2`",
                      "attributes.`Dataset`"}  # fmt: skip
            assert wanted <= shown_columns, shown_columns
            loss_column = "[col-id='metrics.`train/loss`']"
            cells = f"[role=gridcell]{loss_column}"
            page.wait_for_function("s => document.querySelectorAll(s).length >= 3", arg=cells)
            losses = page.locator(cells)
            shown = {float(t) for t in losses.all_inner_texts() if _is_number(t)}
            for child in children:
                loss = child.data.metrics["train/loss"]
                assert any(abs(s - loss) <= 1e-9 + 1e-6 * loss for s in shown), (loss, shown)
            lrs = page.locator("[role=gridcell][col-id='params.`optimizer.lr`']").all_inner_texts()
            assert {"0.01", "0.1"} <= set(lrs), lrs
            page.get_by_text("synthetic-D3-N1000").first.wait_for()  # the dataset column
            # MLflow's own "shared view" banner: the view came from the tag, as the link says.
            page.get_by_text("You're viewing a shared view").first.wait_for()
            _close_assistant(page)
            _screenshot(page, tmp_path, "ui-runs.png")

            # A child's loss plot, served from its file:// artifact location.
            child = max(children, key=lambda run: run.data.metrics["train/loss"])
            page.set_viewport_size({"width": 1300, "height": 900})  # the whole plot
            with page.expect_response(lambda r: "get-artifact" in r.url) as artifact:
                runs_url = url.split("?")[0]  # the run's page: the path, then the same query
                page.goto(f"{runs_url}/{child.info.run_id}/artifacts/plots/loss.png?"
                          + url.split("?")[1])  # fmt: skip
            assert artifact.value.status == 200
            with urllib.request.urlopen(artifact.value.url, timeout=10) as response:
                assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
            page.wait_for_function(  # the plot drawn in the page, not only fetched
                "() => [...document.images].some(i => i.src.startsWith('blob:')"
                " && i.complete && i.naturalWidth > 300)"
            )
            page.get_by_text("parameters.png").first.wait_for()
            _close_assistant(page)
            _screenshot(page, tmp_path, "ui-plots.png")
        finally:
            browser.close()
    assert ui.ctrl_c() == 0


def _close_assistant(page) -> None:
    """The MLflow Assistant panel opens on each page; it hides the table's right side."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_the_saved_view_shows_what_a_sweep_swept_and_the_losses_its_runs_have():
    from linreg_lab.tracking import views

    parent = {
        "sweep.override.0": "experiment=lr_batch_grid",
        "sweep.override.1": "optimizer.lr=0.01,0.1",
        "sweep.override.2": "trainer.epochs=5",  # set, not swept
        "sweep.override.3": "+optimizer.momentum=range(0,1,0.5)",
        "sweep.override.4": "hydra/launcher=joblib",
        "sweep.params.trainer.batch_size": "10,100",
    }
    keys = views.swept_keys(parent)
    assert keys == ["optimizer.lr", "optimizer.momentum", "trainer.batch_size"]
    real_data = views.columns(keys, {"train/loss", "val/loss", "error/lsq_l2", "lr"})
    assert real_data == [
        "attributes.`Dataset`", "params.`optimizer.lr`", "params.`optimizer.momentum`",
        "params.`trainer.batch_size`", "metrics.`train/loss`", "metrics.`val/loss`",
        "metrics.`error/lsq_l2`",
    ]  # fmt: skip
    state = json.loads(json.loads(views.tag_value(real_data))["state"])
    assert state["selectedColumns"] == real_data and state["orderByKey"] == "attributes.end_time"
