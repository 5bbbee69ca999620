"""MLflow in a helper process, so that its start-up and writes overlap training.

Importing mlflow and opening a sqlite store costs ~4 s, more than the whole tutorial script;
training needs none of it. Each process that logs starts one helper (`python -m
linreg_lab.tracking.helper`) and sends it verbs over a pipe: a fixed set (VERBS below), each a
function of an MlflowClient and plain arguments. The helper runs them in order. Most are posted
(the sender goes on); a few wait for their result. A verb that creates something (a run, an
experiment) may be given a Handle that later verbs use in its place before its id is known.

The helper ignores SIGINT and SIGTERM: the training process decides how its runs end, and the
helper writes that down. It exits when told to, or when the training process is gone; runs it
created and nobody ended are then ended FAILED, so a crash never leaves a run RUNNING.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener, Pipe

from linreg_lab.tracking import dataset, model, orphans, plots, records, report, store
from linreg_lab.tracking.store import TrackingError, TrackingSettings
from linreg_lab.tracking.tags import FAILED, FINISHED

MODULE = "linreg_lab.tracking.serve"  # the helper's entry point: python -m MODULE


def _nothing(client) -> None:
    return None


def _same(client, value: str) -> str:
    return value  # the helper replaced a Handle by its id before the call


# The helper's whole vocabulary: name -> function(client, *args). A client is opened only for
# the verbs that need the store (not for the last three).
VERBS = {
    "open_experiment": store.open_experiment,
    "fail_orphans": orphans.fail_orphaned_runs,
    "create_run": records.create_run,
    "log_batch": records.log_batch,
    "log_text": records.log_text,
    "log_bytes": records.log_bytes,
    "log_dataset": dataset.log_dataset,
    "log_plots": plots.log_plots,
    "log_model": model.log_model,
    "end_run": records.end_run,
    "finish_sweep": report.finish_sweep,
    "finished_jobs": report.finished_jobs,
    "announce": records.announce,
    "resolve": _same,
    "sync": _nothing,
}
_STORELESS = {"announce", "resolve", "sync"}
# Writes of a run's records: if one fails, the run cannot end FINISHED (its store would lie).
_RUN_WRITES = {"log_batch", "log_text", "log_bytes", "log_dataset", "log_model"}


class HelperError(RuntimeError):
    """A verb failed in the helper with an error that is not the user's (a traceback follows)."""


class HelperLost(TrackingError):
    """The helper process died (killed, out of memory): its open runs were ended FAILED by a
    second helper, and the records it had not written yet are gone. One line, exit 2."""


@dataclass(frozen=True)
class Handle:
    """What a posted verb creates (a run, an experiment), named before its id exists."""

    key: str


@dataclass(frozen=True)
class _Message:
    seq: int
    verb: str
    settings: TrackingSettings | None
    args: tuple
    binds: Handle | None  # the result is what this handle stands for
    wants_result: bool


class Helper:
    """The sending side: one helper process, started once per process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        # The helper listens on a socket in a folder only this user can enter; a thread below
        # connects to it (multiprocessing's public Listener and Client, not a raw fd).
        self._folder = tempfile.mkdtemp(prefix="linreg-helper-")
        self._address = os.path.join(self._folder, "socket")
        self._connection: Connection | None = None
        self._process = subprocess.Popen(
            [sys.executable, "-m", MODULE, self._address, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            # Ignored from its first instruction: a Ctrl-C during its imports must not kill it.
            preexec_fn=_ignore_stop_signals,
        )
        # Connected beside the caller's own start-up, so that its first message never waits
        # for the helper's (the thread ends once connected, well before training starts).
        self._connector = threading.Thread(target=self._connect_now, daemon=True)
        self._connector.start()
        self._seq = itertools.count(1)
        self._handles = itertools.count(1)
        self._posted = 0
        self._errors: list[tuple[str, str]] = []
        self._raised = 0  # errors already raised to the caller
        self._closed = False
        self._ids: dict[Handle, str] = {}  # what the helper said its handles stand for
        self._open: dict[Handle | str, TrackingSettings | None] = {}  # runs created, not ended
        self._lost: HelperLost | None = None
        # The helper runs messages in order: a reply for message n means all before it are done.
        self._done = 0

    @property
    def _conn(self) -> Connection:
        if self._connection is None:
            self._connector.join()
        return self._connection

    def _connect_now(self) -> None:
        self._connection = self._connect()

    def _connect(self) -> Connection:
        """The helper's end, once it listens; one that reads as a dead helper if it died first."""
        while True:
            try:
                connection = Client(self._address, family="AF_UNIX")
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self._process.poll() is not None:
                    connection, theirs = Pipe(duplex=True)
                    theirs.close()  # poll() is True, recv() is EOF, send() a broken pipe
                    break
                time.sleep(0.002)
        shutil.rmtree(self._folder, ignore_errors=True)
        return connection

    def new_handle(self) -> Handle:
        return Handle(f"{self.pid}-{next(self._handles)}")

    def post(self, verb: str, settings, *args, binds: Handle | None = None) -> None:
        """Queue verb(client, *args) in the helper; its errors surface at check()."""
        if self._lost is not None and verb == "end_run":
            return  # every run it had open was ended FAILED when it was found dead
        self._send(_Message(next(self._seq), verb, settings, args, binds, False))

    def call(self, verb: str, settings, *args, binds: Handle | None = None):
        """Run verb(client, *args) after everything posted before it; its result."""
        seq = next(self._seq)
        self._send(_Message(seq, verb, settings, args, binds, True))
        while True:
            message = self._receive()
            if message[0] in ("result", "raise") and message[1] == seq:
                self.check()
                if message[0] == "raise":
                    self._raised = len(self._errors)  # what was posted failed the same way
                    raise _rebuild(message[2], message[3])
                return message[2]

    def mark(self) -> int:
        """A marker after everything posted so far, answered once the helper has done it all;
        its number, for wait_for (which does not block once the answer is in)."""
        seq = next(self._seq)
        self._send(_Message(seq, "sync", None, (), None, True))
        return seq

    def wait_for(self, seq: int) -> None:
        """Wait until the helper has answered marker seq (mark); raise what failed before it."""
        while self._done < seq:
            self._receive()
        self.check()

    def check(self) -> None:
        """Raise the first failure of a posted verb not raised yet (TrackingError: the user's)."""
        if self._lost is not None:
            raise self._lost
        if not self._closed:
            self._drain()
        if self._raised < len(self._errors):
            first = self._errors[self._raised]
            self._raised = len(self._errors)  # the rest usually follow from the first
            raise _rebuild(*first)

    def close(self, timeout: float = 300.0) -> None:
        """Let the helper finish its queue and exit; unreported failures are printed."""
        if self._closed or self._lost is not None or os.getpid() != self.pid:
            return  # (a forked child's copy is not its own)
        self._closed = True
        if self._posted == 0:  # nothing to write: no need to wait for its imports
            self._process.kill()
            self._process.wait()
            shutil.rmtree(self._folder, ignore_errors=True)
            return
        deadline = time.monotonic() + timeout
        try:
            self._send_now(("close",))
            while self._conn.poll(max(0.0, deadline - time.monotonic())):
                self._note(self._conn.recv())
        except (EOFError, OSError):  # the helper is done
            pass
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"linreg-lab: the MLflow helper did not finish in {timeout:.0f} s; stopping it",
                  file=sys.stderr)  # fmt: skip
            self._process.kill()
        if self._raised == 0:  # once one was raised, the rest usually follow from it
            for text in dict.fromkeys(text for _, text in self._errors):
                print(f"linreg-lab: MLflow: {text}", file=sys.stderr)

    def _send(self, message: _Message) -> None:
        if self._lost is not None:
            raise self._lost
        if self._closed:
            raise HelperError("the MLflow helper is closed")
        self._drain()  # replies never pile up: the helper never blocks on them
        try:
            self._send_now(message)
        except (BrokenPipeError, ConnectionResetError):
            raise self._found_dead() from None
        self._posted = message.seq
        if message.verb == "create_run":
            self._open[message.binds] = message.settings
        elif message.verb in ("end_run", "finish_sweep"):
            self._open.pop(message.args[0], None)

    def _send_now(self, message) -> None:
        """One whole message: no signal handler runs in the middle of it."""
        held = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            self._conn.send(message)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _drain(self) -> None:
        """Take in every reply that has arrived, without waiting."""
        while self._conn.poll(0):
            self._receive()

    def _receive(self):
        if self._lost is not None:
            raise self._lost
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            raise self._found_dead() from None
        return self._note(message)

    def _note(self, message):
        if message[0] in ("result", "raise", "error"):  # message[1] and all before it are done
            self._done = max(self._done, message[1])
        if message[0] == "error":
            self._errors.append((message[2], message[3]))
        elif message[0] == "bound":
            self._ids[message[1]] = message[2]
        return message

    def _found_dead(self) -> HelperLost:
        """The helper died: end its open runs FAILED through a second helper; the error to
        raise now and at every later use."""
        try:  # what it said before it died (the ids of runs it created) is still in the pipe
            while self._conn.poll(0):
                self._note(self._conn.recv())
        except (EOFError, OSError):
            pass
        code = self._process.wait()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        why = f"the MLflow helper process {self._process.pid} {how}; records not written are lost"
        ended = []
        rescue = Helper()
        for key, settings in self._open.items():
            run_id = self._ids.get(key) if isinstance(key, Handle) else key
            if run_id is not None:
                rescue.post("end_run", settings, run_id, FAILED, why)
                ended.append(run_id)
        rescue.close()
        self._closed = True
        said = f": ended run {', '.join(ended)} FAILED" if ended else ""
        self._lost = HelperLost(why + said)
        return self._lost


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _rebuild(kind: str, text: str) -> Exception:
    return TrackingError(text) if kind == "TrackingError" else HelperError(text)


_helper: Helper | None = None


def helper() -> Helper:
    """This process's helper, started on first use (a forked or spawned worker gets its own)."""
    global _helper
    if _helper is None or _helper.pid != os.getpid():
        _helper = Helper()
        atexit.register(_helper.close)  # for library use; linreg-train closes it itself
    return _helper


def close() -> None:
    """Wait for this process's helper to write everything it was sent, and let it exit."""
    if _helper is not None:
        _helper.close()


# ---- the helper's side ---------------------------------------------------------------------


class _Served:
    """What the helper knows: the ids its handles stand for, the runs it opened."""

    def __init__(self) -> None:
        self.ids: dict[Handle, str] = {}
        self.open_runs: dict[str, object] = {}  # run id -> client
        self.lost: dict[str, str] = {}  # run id -> why a write of its records failed

    def substitute(self, value):
        if isinstance(value, Handle):
            if value not in self.ids:
                raise TrackingError("a run or experiment it refers to could not be created")
            return self.ids[value]
        if isinstance(value, list | tuple):
            return type(value)(self.substitute(v) for v in value)
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    def run(self, message: _Message):
        client = None
        if message.verb not in _STORELESS:
            client = store.open_client(message.settings)
        args = [self.substitute(a) for a in message.args]
        if message.verb == "end_run":  # a run is FINISHED only in a store that still exists
            store.check_still_there(message.settings)
        if message.verb == "end_run" and args[1] == FINISHED and args[0] in self.lost:
            args = [args[0], FAILED, f"some of its records were not written: {self.lost[args[0]]}"]
        try:
            result = VERBS[message.verb](client, *args)
        except Exception as error:
            if isinstance(error, TrackingError):
                raise
            if message.verb not in _RUN_WRITES:
                if _is_the_stores(error):  # a dead server, a locked or full store: one line
                    where = message.settings.uri if message.settings else "the store"
                    raise TrackingError(f"tracking.uri={where}: {_first_line(error)}") from None
                raise
            why = _first_line(error)
            self.lost.setdefault(args[0], why)
            store.check_still_there(message.settings)  # the likeliest cause, said plainly
            where = message.settings.uri if message.settings else "the store"
            raise TrackingError(f"could not write run {args[0]} to {where}: {why}") from None
        if message.verb == "create_run":
            self.open_runs[result] = client
        elif message.verb in ("end_run", "finish_sweep"):  # both end the run args[0]
            self.open_runs.pop(args[0], None)
        if message.binds is not None:
            self.ids[message.binds] = result
            return _Bound(message.binds, result)
        return result

    def end_abandoned(self, owner_pid: int, quiet: bool = False) -> None:
        """End FAILED the runs created here and not ended (quiet: the owner has heard why)."""
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        reason = f"process {owner_pid} ended without closing this run (found at {when})"
        for run_id, client in list(self.open_runs.items()):
            try:
                records.end_run(client, run_id, FAILED, reason)
            except Exception as error:
                if not quiet:
                    line = " ".join(str(error).split())[:300]
                    print(f"linreg-lab: could not end run {run_id}: {line}", file=sys.stderr)


_UNREACHABLE = ("Failed to establish a new connection", "Connection refused",
                "Max retries exceeded")  # fmt: skip


def _first_line(error: BaseException) -> str:
    if any(sign in str(error) for sign in _UNREACHABLE):
        return "the MLflow server does not answer (connection refused)"
    return store.first_line(error)[:300]


def _is_the_stores(error: BaseException) -> bool:
    """Whether error is the store's (MLflow's, its database's, the network's), not a bug."""
    from mlflow.exceptions import MlflowException

    kinds = [MlflowException, OSError]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        kinds.append(SQLAlchemyError)
    except ImportError:
        pass
    return isinstance(error, tuple(kinds))


@dataclass(frozen=True)
class _Bound:
    handle: Handle
    id: str


def _describe(error: BaseException) -> tuple[str, str]:
    if isinstance(error, TrackingError):
        return "TrackingError", str(error)
    import traceback

    return type(error).__name__, "".join(traceback.format_exception(error)).rstrip()


def serve(conn: Connection, owner_pid: int) -> None:
    """Run verbs until told to close, or until the owner is gone (then end its open runs)."""
    import logging

    import mlflow  # noqa: F401  # the slow import, done while the owner is busy too

    # Failures reach the owner as one line each; MLflow's own logs (tracebacks included) and
    # its migrations' progress would only repeat them.
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")

    # While the owner composes its config, load what the first verbs need: the database store
    # (~1.8 s beyond mlflow itself; a server's client needs none of it). The plots (~0.5 s, for
    # a sweep's pictures at its end) are readied at the first moment with nothing to do.
    if not conn.poll(0) and not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        _warm(_import_database_store)
    plots_ready = False
    served = _Served()
    while True:
        if not plots_ready and not conn.poll(0):
            _warm(plots.warm_up)
            plots_ready = True
        try:
            message = conn.recv()
        except (EOFError, OSError):
            served.end_abandoned(owner_pid)
            return
        if message == ("close",):
            served.end_abandoned(owner_pid, quiet=True)  # none, unless a write of its end failed
            conn.close()
            return
        try:
            result = served.run(message)
        except BaseException as error:  # reported to the owner, who decides
            kind, text = _describe(error)
            _reply(conn, ("raise" if message.wants_result else "error", message.seq, kind, text))
            continue
        if isinstance(result, _Bound):  # the owner learns the id, to end the run if we die
            _reply(conn, ("bound", result.handle, result.id))
            result = result.id
        if message.wants_result:
            _reply(conn, ("result", message.seq, result))


def _import_database_store() -> None:
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def _warm(step) -> None:
    """A head start only: whatever fails here fails again, and is reported, where it is used."""
    try:
        step()
    except Exception:
        pass


def _reply(conn: Connection, message) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError, OSError):
        pass  # the owner is gone; the next recv ends the loop


def _outlive_no_owner(owner_pid: int, connected: threading.Event) -> None:
    """Exit if the owner dies before it connects (nothing was sent: nothing to write)."""
    while not connected.wait(0.2):
        if os.getppid() != owner_pid:
            os._exit(0)


def main(argv: list[str]) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    # MLflow prints a run page's link as a server's run ends, in the GenAI view, once per job:
    # linreg-ui prints the runs table's link instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars on the console
    owner_pid = int(argv[1])
    listener = Listener(argv[0], family="AF_UNIX")
    connected = threading.Event()
    threading.Thread(target=_outlive_no_owner, args=(owner_pid, connected), daemon=True).start()
    conn = listener.accept()
    connected.set()
    try:
        listener.close()
    except OSError:  # the owner removed the socket's folder first
        pass
    serve(conn, owner_pid)
    # Every write is committed by now; skip the interpreter's teardown of MLflow (~1-2 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
