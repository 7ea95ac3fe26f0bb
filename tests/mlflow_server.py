"""Test helpers around scripts/mlflow_server.sh: a PostgreSQL-backed MLflow tracking server in a temporary folder.

    with server_tmp_dir() as root, running_server(root) as uri:
        client = MlflowClient(uri)
        stop_mlflow(root)       # the MLflow server alone goes down ...
        start_mlflow(root)      # ... and comes back on the same port
        restart_postgres(root)  # PostgreSQL alone: stop -m fast, start

Everything lives in `<root>/server` (REALFAKE_SERVER_DIR), on free ports, so tests never touch the repository's
.cache/mlflow-server nor a server someone started by hand; `running_server` stops both servers on the way out, also
when the body (or the start itself) failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "mlflow_server.sh"
START_TIMEOUT_S = 900  # the first start may apt-get install PostgreSQL


class ServerUnavailable(RuntimeError):
    """What the server needs is missing here (tests skip on it)."""


def venv_dir() -> Path:
    """The virtual environment that runs the tests: its mlflow serves, so client and server have one version."""
    prefix = Path(sys.prefix)
    return prefix if (prefix / "bin" / "mlflow").exists() else REPO / ".venv"


def unavailable_reason() -> str | None:
    """Why the server cannot start on this machine, or None."""
    venv = venv_dir()
    if not (venv / "bin" / "mlflow").exists():
        return f"no mlflow in {venv}/bin"
    probe = subprocess.run([venv / "bin" / "python", "-c", "import psycopg2"], capture_output=True)
    if probe.returncode != 0:
        return f"psycopg2 is missing from {venv}: pip install -e '.[server]'"
    has_postgres = any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not has_postgres and not (os.geteuid() == 0 and shutil.which("apt-get")):
        return "PostgreSQL is not installed and this user cannot apt-get it (scripts/mlflow_server.sh install, as root)"
    return None


def skip_unless_available() -> None:
    """Skip when the server cannot start here, or fail when REALFAKE_REQUIRE_SERVER=1 (`make test-server`, CI)."""
    import pytest

    reason = unavailable_reason()
    if reason and os.environ.get("REALFAKE_REQUIRE_SERVER") == "1":
        pytest.fail(f"the MLflow server tests must run here: {reason}")
    if reason:
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def state_dir(root: Path) -> Path:
    return Path(root) / "server"


def _script(root: Path, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 120, check: bool = True):
    env = {
        **os.environ,
        "REALFAKE_SERVER_DIR": str(state_dir(root)),
        "REALFAKE_VENV": str(venv_dir()),
        **(extra_env or {}),
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=root
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"scripts/mlflow_server.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
        )
    return proc


def script(root: Path, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run scripts/mlflow_server.sh with the state folder of `root` (its ports come from the state's files)."""
    return _script(root, *args, timeout=timeout, check=check)


@contextlib.contextmanager
def server_tmp_dir(prefix: str = "realfake-server-") -> Iterator[Path]:
    """A temporary folder the `postgres` user can walk into (pytest's tmp_path sits below 0700 folders of root's,
    where the cluster, owned by `postgres` when we are root, could not live). Removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        root.chmod(0o711)  # others may enter, not list
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_server(tmp_root: Path, workers: int = 1) -> Iterator[str]:
    """Start PostgreSQL and the MLflow server with their state in `tmp_root`/server, on free ports; yield the
    tracking URI; stop both at the end, whatever happened."""
    reason = unavailable_reason()
    if reason:
        raise ServerUnavailable(reason)
    ports = {
        "REALFAKE_PG_PORT": str(free_port()),
        "REALFAKE_MLFLOW_PORT": str(free_port()),
        "REALFAKE_MLFLOW_WORKERS": str(workers),
    }
    while ports["REALFAKE_MLFLOW_PORT"] == ports["REALFAKE_PG_PORT"]:
        ports["REALFAKE_MLFLOW_PORT"] = str(free_port())
    try:
        proc = _script(tmp_root, "start", extra_env=ports, timeout=START_TIMEOUT_S)
        uri = proc.stdout.strip().splitlines()[-1]
        yield uri
    finally:
        stop(tmp_root)


def start(root: Path) -> str:
    """`start`: brings back whichever of the two is down (same ports); returns the tracking URI."""
    return script(root, "start", timeout=START_TIMEOUT_S).stdout.strip().splitlines()[-1]


def stop(root: Path) -> None:
    """Stop both; on a failure of the script, kill the MLflow server's process group and say so."""
    if not state_dir(root).exists():
        return
    proc = script(root, "stop", check=False)
    if proc.returncode != 0:
        pid_file = state_dir(root) / "mlflow.pid"
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), 9)
        print(f"scripts/mlflow_server.sh stop failed ({proc.returncode}): {proc.stderr}", file=sys.stderr)


def stop_mlflow(root: Path) -> None:
    """Stop the MLflow server alone; PostgreSQL keeps running."""
    script(root, "stop-mlflow")


def start_mlflow(root: Path) -> str:
    """Start the MLflow server again (PostgreSQL runs already); returns the tracking URI."""
    return start(root)


def stop_postgres(root: Path) -> None:
    """Stop PostgreSQL alone (pg_ctl stop -m fast), under a running MLflow server."""
    script(root, "stop-postgres")


def restart_postgres(root: Path) -> None:
    """Restart PostgreSQL alone: the MLflow server keeps its process and must reconnect."""
    stop_postgres(root)
    start(root)


def status(root: Path) -> subprocess.CompletedProcess:
    return script(root, "status", check=False)
