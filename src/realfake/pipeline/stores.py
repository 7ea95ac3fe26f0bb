"""Whether an MLflow store can be used, checked before MLflow touches it, and what is wrong with it in one line.

SQLite: the folder must exist (it is never created: a typo in MLFLOW_TRACKING_URI must not grow a folder tree), the
file and its folder must be writable, and an existing database must be MLflow's own (an empty file is fine): MLflow
would otherwise add its tables to another program's database. HTTP(S): the server must answer within seconds
(HTTP_TIMEOUT_S), not after MLflow's default of minutes of retries; MLFLOW_HTTP_REQUEST_TIMEOUT and
MLFLOW_HTTP_REQUEST_MAX_RETRIES, when set, are left as they are.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from realfake.errors import RealfakeError

HTTP_TIMEOUT_S = float(os.environ.get("REALFAKE_HTTP_TIMEOUT", "10"))  # seconds per request to a tracking server
HTTP_MAX_RETRIES = 2  # MLflow retries a failed request this often (its default: 7, with exponential backoff)
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs"})  # any of them: an MLflow database


class TrackingStoreError(RealfakeError):
    """The MLflow store cannot be used: corrupt, locked, read-only, unreachable, or not MLflow's."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for other stores."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check(uri: str) -> None:
    """Raise TrackingStoreError naming the store when it cannot be used (see the module's docstring)."""
    path = sqlite_path(uri)
    if path is not None:
        _check_sqlite(uri, path)
    elif uri.startswith(("http://", "https://")):
        limit_http_waits()
        _check_http(uri)


def _check_sqlite(uri: str, path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise TrackingStoreError(
            f"MLflow store {uri}: the folder {folder} does not exist (not created: check the path, or create it)"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise TrackingStoreError(f"MLflow store {uri} is read-only: the file {path} cannot be written; make it "
                                 "writable (chmod u+w) or point MLFLOW_TRACKING_URI at another store")  # fmt: skip
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrackingStoreError(f"MLflow store {uri} is read-only: its folder {folder} cannot be written (SQLite "
                                 "keeps its journal and realfake its lock file there)")  # fmt: skip
    if path.exists() and path.stat().st_size > 0:
        tables = _tables(path)
        if tables is not None and tables and not tables & MLFLOW_TABLES:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise TrackingStoreError(
                f"MLflow store {uri}: the file {path} is an SQLite database of another program (tables: {shown}); "
                "MLflow would add its tables to it. Point MLFLOW_TRACKING_URI at another file"
            )


def _tables(path: Path) -> set[str] | None:
    """The table names of an SQLite file, read without writing; None when it is not a readable database (MLflow's
    own error then names the problem, see `problem`)."""
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return {name for (name,) in rows}


def limit_http_waits() -> None:
    """A tracking server that does not answer fails the stage within seconds (MLflow's own defaults: minutes)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(HTTP_TIMEOUT_S)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def _check_http(uri: str) -> None:
    """Any HTTP answer (even an error status) means the server is there; no answer within the timeout does not."""
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S))
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingStoreError(
            f"MLflow store {uri} cannot be reached ({reason}; waited at most {timeout:.0f} s): start the tracking "
            "server (make mlflow-server) or unset MLFLOW_TRACKING_URI to use the repository's own mlflow.db"
        ) from None


def problem(uri: str, exc: BaseException) -> TrackingStoreError:
    """One line naming the store, what is wrong and what to do."""
    if isinstance(exc, TrackingStoreError):
        return exc
    text = f"{type(exc).__name__}: {exc}".lower()
    path = sqlite_path(uri)
    if "not a database" in text or "malformed" in text or "no such table" in text or "alembic" in text:
        what = (
            f"is not a usable MLflow database (corrupt or from another program). Move it aside to start a new store "
            f"(mv {path} {path}.broken), or point MLFLOW_TRACKING_URI at another store"
        )
    elif "readonly" in text or "read-only" in text or "read only" in text:
        what = f"is read-only (file: {path}); make it writable or point MLFLOW_TRACKING_URI at another store"
    elif "locked" in text:
        what = "stayed locked by another process; wait for the other stage to finish, or stop it, and run again"
    elif any(word in text for word in ("connection", "refused", "max retries", "timed out", "unreachable")):
        what = (
            "cannot be reached; start the tracking server (make mlflow-server) or unset MLFLOW_TRACKING_URI to use "
            "the repository's own mlflow.db"
        )
    else:
        what = f"cannot be used ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"
    return TrackingStoreError(f"MLflow store {uri} {what}")
