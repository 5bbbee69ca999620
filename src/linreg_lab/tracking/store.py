"""Where runs are recorded: an MLflow tracking URI and an experiment in it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from linreg_lab.paths import DEFAULT_TRACKING_URI

# Set before mlflow is imported: no telemetry, and a dead server fails in seconds, not minutes.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


_SECRET = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]+):[^@\s]+@")


def mask_secrets(text: str) -> str:
    """text with the password of every URI in it masked: postgresql://user:***@host/db."""
    return _SECRET.sub(r"\1:***@", str(text))


class TrackingError(RuntimeError):
    """The store cannot be used; the message never shows a URI's password."""

    def __init__(self, message: str):
        super().__init__(mask_secrets(message))


@dataclass(frozen=True)
class TrackingSettings:
    uri: str = DEFAULT_TRACKING_URI
    artifact_location: str | None = None
    experiment_name: str = "linreg"
    run_name: str | None = None
    log_weights_up_to: int = 10
    log_model: bool = False
    log_plots: bool = True
    plots_per_job: bool = False  # in a sweep, each job's own PNGs too (not only the sweep's)
    register_best: bool = True  # a sweep's best model: logged, registered, alias @best
    registered_model_name: str | None = None  # None: the experiment's name

    def __post_init__(self) -> None:
        # Names may read as numbers on the command line (tracking.experiment_name=2024).
        object.__setattr__(self, "experiment_name", str(self.experiment_name))
        if self.run_name is not None:
            object.__setattr__(self, "run_name", str(self.run_name))
        if self.registered_model_name is not None:
            object.__setattr__(self, "registered_model_name", str(self.registered_model_name))

    @property
    def model_name(self) -> str | None:
        """Where a sweep registers its best model (None: it registers none)."""
        return (self.registered_model_name or self.experiment_name) if self.register_best else None

    @property
    def is_server(self) -> bool:
        return urlparse(self.uri).scheme in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    """The file behind a sqlite:/// URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def open_client(settings: TrackingSettings):
    """An MlflowClient on settings.uri; creates a sqlite store's folder, checks a server answers.

    One client per URI and process: the jobs of a sweep in one process share it.
    """
    if settings.uri not in _clients:
        _clients[settings.uri] = _open_client(settings)
        db = sqlite_path(settings.uri)
        if db is not None:
            _files[settings.uri] = _identity(db)
    return _clients[settings.uri]


_clients: dict[str, object] = {}
_files: dict[str, tuple[int, int] | None] = {}  # a sqlite store's file as it was opened


def _identity(db: Path) -> tuple[int, int] | None:
    try:
        stat = db.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_still_there(settings: TrackingSettings) -> None:
    """Raise TrackingError if a sqlite store's file was deleted or replaced since it was opened:
    writes would land in a file nobody can read again."""
    db = sqlite_path(settings.uri)
    if db is not None and settings.uri in _files and _identity(db) != _files[settings.uri]:
        raise TrackingError(
            f"tracking.uri={settings.uri}: the store's file was deleted or replaced while runs "
            "were written to it; what they logged since is lost"
        )


def _open_client(settings: TrackingSettings):
    from mlflow import MlflowClient

    db = sqlite_path(settings.uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(
                f"tracking.uri={settings.uri}: cannot create {db.parent} ({error.strerror})"
            ) from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"tracking.uri={settings.uri}: {db} is not writable")
    elif settings.is_server:
        _check_server(settings.uri)
    try:
        if db is None:
            return _opened(MlflowClient(tracking_uri=settings.uri))
        # A new sqlite store is created (its tables, then MLflow's migrations) by one process
        # at a time: two commands racing on it left it half-made for good.
        from filelock import FileLock

        with FileLock(f"{db}.lock", timeout=600):
            half_made = _half_made(db)
            if half_made:
                raise TrackingError(f"tracking.uri={settings.uri}: {half_made}")
            if not db.exists() or db.stat().st_size == 0:
                _create(db, settings.uri)
            return _opened(MlflowClient(tracking_uri=settings.uri))
    except TrackingError:
        raise
    except Exception as error:  # MLflow raises several kinds for a bad or foreign store
        message = first_line(error)
        if db is not None and db.exists():
            message += _sqlite_diagnosis(db, settings.uri)
        raise TrackingError(f"tracking.uri={settings.uri}: {message}") from None


def _create(db: Path, uri: str) -> None:
    """Create a new sqlite store whole or not at all: MLflow builds it (tables, then its
    migrations) in a file beside db, which takes db's name only once it is complete. A full
    disk or a kill midway leaves no half-made store behind."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    building = db.with_name(f".{db.name}.creating")
    building.unlink(missing_ok=True)  # an earlier creation's, killed midway
    try:
        # The store MlflowClient would open, made here so that its connections can be closed
        # before the file is renamed (what the client keeps of it is not public).
        made = SqlAlchemyStore(f"sqlite:///{building}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        made.search_experiments(max_results=1)
        made.engine.dispose()
        os.replace(building, db)
    except BaseException as error:
        building.unlink(missing_ok=True)
        if isinstance(error, Exception):
            raise TrackingError(
                f"tracking.uri={uri}: the new store could not be created ({first_line(error)}); "
                "nothing was left behind"
            ) from None
        raise


def _opened(client):
    client.search_experiments(max_results=1)  # the client is lazy: open the store now
    return client


def _schema(db: Path) -> tuple[set[str], str | None] | None:
    """The tables of the sqlite file db and its MLflow schema revision (None: no revision
    recorded), read without writing; None when db is not a sqlite database."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            tables = {row[0] for row in connection.execute("select name from sqlite_master")}
            row = None
            if "alembic_version" in tables:
                row = connection.execute("select version_num from alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return tables, row[0] if row else None


def _half_made_message(db: Path) -> str:
    return (
        f"{db} is half-made: its creation was interrupted. Move it away, e.g. "
        f"`mv {db} {db}.broken`, and run again; a new store is created"
    )


def _half_made(db: Path) -> str | None:
    """Why db is a store whose creation was interrupted (a race, a full disk), or None."""
    if not db.exists() or db.stat().st_size == 0:
        return None  # a new store: MLflow creates it
    schema = _schema(db)
    if schema is None:
        return f"{db} is not an MLflow sqlite store"
    tables, revision = schema
    if tables and (revision is None or any(t.startswith("_alembic_tmp") for t in tables)):
        return _half_made_message(db)
    return None


def _sqlite_diagnosis(db: Path, uri: str) -> str:
    """Why an existing sqlite store does not open, read from the file itself."""
    schema = _schema(db)
    if schema is None:
        return f" ({db} is not an MLflow sqlite store)"
    tables, revision = schema
    if revision is None or any(name.startswith("_alembic_tmp") for name in tables):
        return f" ({_half_made_message(db)})"
    return (
        f" (this store's schema is revision {revision}, written by another MLflow version than "
        f"{mlflow_version()}: upgrade an older store with `mlflow db upgrade {uri}`, or use the "
        "MLflow that wrote it)"
    )


def mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def open_experiment(client, settings: TrackingSettings) -> str:
    """The id of settings.experiment_name, created (with our artifact folder) if missing."""
    experiment = _call(client.get_experiment_by_name, settings, settings.experiment_name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"tracking.experiment_name={settings.experiment_name} is deleted in "
                f"{settings.uri}; restore it in the UI or choose another name"
            )
        return experiment.experiment_id
    artifact_location = None
    db = sqlite_path(settings.uri)
    if settings.artifact_location and "://" in settings.artifact_location:
        artifact_location = settings.artifact_location  # a remote store (s3://, gs://, ...)
    elif settings.artifact_location and not settings.is_server:
        artifact_location = Path(settings.artifact_location).resolve().as_uri()
    elif db is not None:  # keep a store's files together: mlruns/mlflow.db, mlruns/artifacts
        artifact_location = (db.parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(settings.experiment_name, artifact_location)
    except Exception:
        # Another process created it first.
        experiment = _call(client.get_experiment_by_name, settings, settings.experiment_name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _check_server(uri: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"tracking.uri={uri}: no MLflow server answers ({reason})") from None


def _call(method, settings: TrackingSettings, *args):
    try:
        return method(*args)
    except Exception as error:
        raise TrackingError(f"tracking.uri={settings.uri}: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
