"""MLflow in a helper process, so that its start-up and writes overlap training.

Importing mlflow and opening a sqlite store costs ~4 s, more than the whole tutorial script;
training needs none of it. The training process starts one helper (`python -m
linreg_lab.tracking.service`) at start-up and sends it calls over a pipe: a function of this
package that takes an MlflowClient first, with plain arguments. The helper runs them in order.
Most calls are posted (the caller goes on); a few wait for their result. A run or experiment
created by a posted call is named by a reference ("ref:...") that later calls may use in its place.

The helper ignores SIGINT and SIGTERM: the training process decides how its runs end, and the
helper writes that down. It exits when told to, or when the training process is gone; runs it
created and nobody ended are then ended FAILED, so a crash never leaves a run RUNNING.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe

from linreg_lab.tracking.store import TrackingError, TrackingSettings

REF_PREFIX = "ref:"
MODULE = "linreg_lab.tracking.service"


class TrackerError(RuntimeError):
    """A call failed in the helper with an error that is not the user's (a traceback follows)."""


@dataclass(frozen=True)
class _Call:
    seq: int
    settings: TrackingSettings | None  # None: no store needed
    function: str  # "module:qualname"
    args: tuple
    kwargs: dict
    wants_result: bool


class Tracker:
    """The training process's side: one helper process, started once per process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        ours, theirs = Pipe(duplex=True)
        self._conn: Connection = ours
        self._process = subprocess.Popen(
            [sys.executable, "-m", MODULE, str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._seq = itertools.count(1)
        self._refs = itertools.count(1)
        self._posted = 0
        self._done = 0  # the last call the helper has finished
        self._errors: list[tuple[str, str]] = []
        self._raised = 0  # errors already raised to the caller
        self._closed = False
        self._run_starts: deque[int] = deque(maxlen=2)
        self._offloaded = 0  # the last call offload() posted

    def new_ref(self) -> str:
        return f"{REF_PREFIX}{self.pid}-{next(self._refs)}"

    def post(self, settings: TrackingSettings, function, *args, **kwargs) -> None:
        """Queue function(client, *args, **kwargs) in the helper; errors surface at check()."""
        self._send(settings, function, args, kwargs, wants_result=False)

    def call(self, settings: TrackingSettings, function, *args, **kwargs):
        """Run function(client, *args, **kwargs) in the helper after what was posted; its result."""
        seq = self._send(settings, function, args, kwargs, wants_result=True)
        while True:
            message = self._receive()
            if message[0] == "result" and message[1] == seq:
                self.check()
                return message[2]
            if message[0] == "raise" and message[1] == seq:
                self.check()
                raise _rebuild(message[2], message[3])

    def sync(self) -> None:
        """Wait until the helper has finished everything posted; raise the first failure."""
        self.call(None, _nothing)

    def mark_run_start(self) -> None:
        """Note that the calls posted from now on write a new run."""
        self._run_starts.append(self._posted)

    def offload(self, settings: TrackingSettings | None, function, *args, **kwargs) -> bool:
        """Post work the caller could do itself, if the helper has time: True if posted.

        The helper has time when it has finished the previous offloaded call and is at most
        one run behind (every call posted before the previous run began is done). Otherwise
        the caller does the work, and the two processes share it.
        """
        caught_up_to = max(
            self._offloaded, self._run_starts[0] if self._run_starts else self._posted
        )
        self._drain()
        if self._done < caught_up_to:
            return False
        self.hand_over(settings, function, *args, **kwargs)
        return True

    def hand_over(self, settings: TrackingSettings | None, function, *args, **kwargs) -> None:
        """Post work the caller could do itself, whether or not the helper has time; later
        offload() calls count it as theirs (they wait for it before posting more)."""
        self.post(settings, function, *args, **kwargs)
        self._offloaded = self._posted

    def check(self) -> None:
        """Raise the first failure of a posted call not raised yet (TrackingError: the user's)."""
        if not self._closed:
            self._drain()
        if self._raised < len(self._errors):
            first = self._errors[self._raised]
            self._raised = len(self._errors)  # the rest usually follow from the first
            raise _rebuild(*first)

    def close(self, timeout: float = 300.0) -> None:
        """Let the helper finish its queue and exit; unreported failures go to the log."""
        if self._closed or os.getpid() != self.pid:  # a forked child's copy is not its own
            return
        self._closed = True
        if self._posted == 0:  # nothing to write: no need to wait for its imports
            self._process.kill()
            self._process.wait()
            return
        try:
            self._conn.send(("close",))
            while True:
                self._note(self._conn.recv())
        except Exception:  # EOF: the helper is done (or a reply was cut by Ctrl-C)
            pass
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"linreg-lab: the MLflow helper did not finish in {timeout:.0f} s; stopping it",
                  file=sys.stderr)  # fmt: skip
            self._process.kill()
        told = {text for _, text in self._errors[: self._raised]}
        for text in dict.fromkeys(text for _, text in self._errors[self._raised :]):
            if text not in told:
                print(f"linreg-lab: MLflow: {text}", file=sys.stderr)

    def _send(self, settings, function, args, kwargs, wants_result: bool) -> int:
        if self._closed:
            raise TrackerError("the MLflow helper is closed")
        self._drain()  # replies never pile up: the helper never blocks on them
        seq = next(self._seq)
        name = f"{function.__module__}:{function.__qualname__}"
        try:
            self._conn.send(_Call(seq, settings, name, args, kwargs, wants_result))
        except (BrokenPipeError, ConnectionResetError):
            raise TrackerError(
                f"the MLflow helper process {self._process.pid} is gone "
                f"(exit code {self._process.poll()})"
            ) from None
        self._posted = seq
        return seq

    def _drain(self) -> None:
        """Take in every reply that has arrived, without waiting."""
        while self._conn.poll(0):
            self._receive()

    def _receive(self):
        try:
            message = self._conn.recv()
        except EOFError:
            code = self._process.wait()
            raise TrackerError(f"the MLflow helper process ended (exit code {code})") from None
        return self._note(message)

    def _note(self, message):
        if message[0] == "done":
            self._done = message[1]
        elif message[0] == "error":
            self._errors.append((message[2], message[3]))
        elif message[0] in ("result", "raise"):
            self._done = message[1]
        return message


def _rebuild(kind: str, text: str) -> Exception:
    return TrackingError(text) if kind == "TrackingError" else TrackerError(text)


def _nothing(client) -> None:
    return None


_tracker: Tracker | None = None


def tracker() -> Tracker:
    """This process's helper, started on first use (a forked or spawned worker gets its own)."""
    global _tracker
    if _tracker is None or _tracker.pid != os.getpid():
        _tracker = Tracker()
        atexit.register(_tracker.close)
    return _tracker


def start() -> None:
    """Start the helper now, so its imports run while this process imports torch."""
    tracker()


def is_helper(cmdline: list[str]) -> bool:
    return MODULE in cmdline


@dataclass(frozen=True)
class Store:
    """One tracking store as the training process sees it: calls and posts into the helper.

    Holds only settings (launchers pickle it into workers): each process uses its own helper.
    """

    settings: TrackingSettings

    @classmethod
    def of(cls, settings: TrackingSettings) -> Store:
        tracker()  # start the helper now if this process has none
        return cls(settings)

    def post(self, function, *args, **kwargs) -> None:
        tracker().post(self.settings, function, *args, **kwargs)

    def call(self, function, *args, **kwargs):
        return tracker().call(self.settings, function, *args, **kwargs)

    def new_ref(self) -> str:
        return tracker().new_ref()

    def resolve(self, ref: str) -> str:
        """The id a reference stands for, once the helper has created it."""
        return self.call(_resolve, ref) if ref.startswith(REF_PREFIX) else ref

    def check(self) -> None:
        tracker().check()

    def sync(self) -> None:
        tracker().sync()

    def mark_run_start(self) -> None:
        tracker().mark_run_start()

    def offload(self, function, *args, **kwargs) -> bool:
        return tracker().offload(self.settings, function, *args, **kwargs)

    def hand_over(self, function, *args, **kwargs) -> None:
        tracker().hand_over(self.settings, function, *args, **kwargs)


def _resolve(client, value: str) -> str:
    return value  # the helper replaced the reference before the call


# ---- the helper's side ---------------------------------------------------------------------

_refs: dict[str, str] = {}
_open_runs: dict[str, object] = {}  # runs created here and not ended yet, with their client


def bind_ref(ref: str, value: str) -> None:
    """Called by helper-side functions that create what ref names."""
    _refs[ref] = value


def run_opened(run_id: str, client) -> None:
    _open_runs[run_id] = client


def run_closed(run_id: str) -> None:
    _open_runs.pop(run_id, None)


def _substitute(value):
    if isinstance(value, str):
        # An unbound reference is the one the call creates (or one whose creation failed,
        # which the owner hears about first).
        return _refs.get(value, value) if value.startswith(REF_PREFIX) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(v) for v in value)
    if isinstance(value, dict):
        return {k: _substitute(v) for k, v in value.items()}
    return value


def _run(call: _Call):
    from linreg_lab.tracking.store import open_client

    module, _, qualname = call.function.partition(":")
    function = importlib.import_module(module)
    for part in qualname.split("."):
        function = getattr(function, part)
    client = open_client(call.settings) if call.settings is not None else None
    return function(client, *_substitute(call.args), **_substitute(call.kwargs))


def _describe(error: BaseException) -> tuple[str, str]:
    if isinstance(error, TrackingError):
        return "TrackingError", str(error)
    import traceback

    return type(error).__name__, "".join(traceback.format_exception(error)).rstrip()


def serve(conn: Connection, owner_pid: int) -> None:
    """Run calls until told to close, or until the owner is gone (then end its open runs)."""
    import mlflow  # noqa: F401  # the slow import, done while the owner is busy too

    if not conn.poll(0):  # nothing to do yet (a sweep composing its jobs): ready the plots
        from linreg_lab.tracking.plots import warm_up

        warm_up()

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            _end_abandoned(owner_pid)
            return
        if message == ("close",):
            conn.close()
            return
        try:
            result = _run(message)
        except BaseException as error:  # reported to the owner, who decides
            kind, text = _describe(error)
            reply = ("raise", message.seq, kind, text) if message.wants_result else None
            _reply(conn, reply or ("error", message.seq, kind, text))
            if not message.wants_result:
                _reply(conn, ("done", message.seq))
            continue
        _reply(
            conn, ("result", message.seq, result) if message.wants_result else ("done", message.seq)
        )


def _reply(conn: Connection, message) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError, OSError):
        pass  # the owner is gone; the next recv ends the loop


def _end_abandoned(owner_pid: int) -> None:
    from linreg_lab.tracking.run import FAILED
    from linreg_lab.tracking.writes import end_run

    when = time.strftime("%Y-%m-%d %H:%M:%S")
    reason = f"process {owner_pid} ended without closing this run (found at {when})"
    for run_id, client in list(_open_runs.items()):
        try:
            end_run(client, run_id, FAILED, reason)
        except Exception as error:
            print(f"linreg-lab: could not end run {run_id}: {error}", file=sys.stderr)


def main(argv: list[str]) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    serve(conn, int(argv[1]))
    # Every write is committed by now; skip the interpreter's teardown of MLflow (~1-2 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    # Through the imported module, not __main__: helper-side functions share its state.
    importlib.import_module(MODULE).main(sys.argv[1:])
