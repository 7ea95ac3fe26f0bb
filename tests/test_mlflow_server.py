"""The shared tracking server of scripts/mlflow_server.sh (PostgreSQL backend, proxied artifact store), for real:
a round trip through a fresh client, faults (MLflow down, PostgreSQL restarted), and its speed (`-s` prints it).

The server runs in a temporary folder on free ports (tests/mlflow_server.py), once for this module; it skips when
PostgreSQL cannot be had here (not root and not installed) or the venv lacks psycopg2 (pip install -e '.[server]').
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow_server import (
    ServerUnavailable,
    running_server,
    script,
    server_tmp_dir,
    skip_unless_available,
    start,
    start_mlflow,
    state_dir,
    status,
    stop_mlflow,
    stop_postgres,
)

pytestmark = pytest.mark.server

MODEL_NAME = "realfake-server-test"
N_SEQUENTIAL = 200  # mlflow.log_metric calls, one at a time, per store
N_PER_WORKER = 50  # metrics each concurrent client process logs
CONCURRENCY = (4, 8)  # client processes at once


@pytest.fixture(scope="module")
def server_root():
    skip_unless_available()
    with server_tmp_dir() as root:
        yield root


@pytest.fixture(scope="module")
def server_uri(server_root):
    try:
        with running_server(server_root) as uri:
            yield uri
    except ServerUnavailable as exc:  # pragma: no cover - unavailable_reason() said so already
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def client_env(monkeypatch):
    """No client retries (errors show, and fail fast), no telemetry; the global tracking URI restored afterwards."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)  # undone at teardown


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return model_input * 2


def listening_addresses(port: int) -> set[str]:
    """The local addresses listening on TCP `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if len(address) == 8:  # IPv4, little-endian hex
                    found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add(f"ipv6:{address}")
    return found


def test_script_start_is_idempotent_and_binds_loopback_only(server_root, server_uri):
    begin = time.perf_counter()
    assert start(server_root) == server_uri  # both run: only the URI
    assert time.perf_counter() - begin < 15
    assert script(server_root, "uri").stdout.strip() == server_uri
    report = status(server_root)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "mlflow: running" in report.stdout and "postgres: running" in report.stdout

    state = state_dir(server_root)
    pg_port = int((state / "pg.port").read_text())
    mlflow_port = int(server_uri.rsplit(":", 1)[1])
    assert listening_addresses(pg_port) == {"127.0.0.1"}
    assert listening_addresses(mlflow_port) == {"127.0.0.1"}
    assert list((state / "pg").glob(".s.PGSQL.*")), "the unix socket belongs in the cluster's folder"

    # the database password: generated, 0600, on no process's command line and in no log
    password = (state / "pg-password").read_text().strip()
    assert len(password) >= 32
    assert (state / "pg-password").stat().st_mode & 0o077 == 0
    assert (state / "pgpass").stat().st_mode & 0o077 == 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert password not in cmdline.read_text(errors="replace")
        except OSError:
            continue
    for log in state.glob("*.log"):
        assert password not in log.read_text(errors="replace"), log


def test_round_trip_through_a_fresh_client(server_root, server_uri, tmp_path):
    mlflow.set_tracking_uri(server_uri)
    experiment_id = mlflow.create_experiment("round-trip")
    report = tmp_path / "report.txt"
    report.write_text("real vs fake\n")
    with mlflow.start_run(experiment_id=experiment_id, run_name="round-trip") as run:
        mlflow.log_params({"learning_rate": 0.001, "model": "cnn"})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metric("accuracy", 0.875)
        mlflow.log_artifact(str(report), artifact_path="reports")
        model_info = mlflow.pyfunc.log_model(
            name="model", python_model=Doubler(), pip_requirements=["mlflow"], registered_model_name=MODEL_NAME
        )
    version = model_info.registered_model_version
    MlflowClient(server_uri).set_registered_model_alias(MODEL_NAME, "champion", version)

    client = MlflowClient(tracking_uri=server_uri)  # fresh: nothing cached from the writes above
    assert client.get_experiment_by_name("round-trip").experiment_id == experiment_id
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"learning_rate": "0.001", "model": "cnn"}
    assert got.data.metrics == {"loss": 0.2, "accuracy": 0.875}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (step, 1.0 / (step + 1)) for step in range(5)
    ]

    # artifacts go through the server's proxy into its --artifacts-destination
    assert got.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "reports")] == ["reports/report.txt"]
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="reports/report.txt", dst_path=str(tmp_path / "download")
    )
    assert Path(downloaded).read_text() == "real vs fake\n"
    assert [p.read_text() for p in (state_dir(server_root) / "artifacts").rglob("report.txt")] == ["real vs fake\n"]

    # the registry: the version, its alias, and the model behind it
    by_alias = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert by_alias.version == str(version)
    assert by_alias.run_id == run.info.run_id
    assert client.get_registered_model(MODEL_NAME).aliases == {"champion": str(version)}
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    assert model.predict(pd.DataFrame({"x": [1.0, 2.5]}))["x"].tolist() == [2.0, 5.0]


def test_postgres_restart_between_two_logging_calls(server_root, server_uri):
    client = MlflowClient(server_uri)
    run_id = client.create_run(client.create_experiment("postgres-restart")).info.run_id
    client.log_metric(run_id, "loss", 1.0, step=0)
    mlflow_pid = (state_dir(server_root) / "mlflow.pid").read_text()

    stop_postgres(server_root)
    begin = time.perf_counter()
    with pytest.raises(MlflowException) as down:  # PostgreSQL is down: a clear error, soon
        client.log_metric(run_id, "loss", 2.0, step=1)
    took = time.perf_counter() - begin
    print(f"\n[server] PostgreSQL down: log_metric failed after {took:.2f} s: {down.value}")
    assert took < 30

    start(server_root)  # PostgreSQL alone comes back; the MLflow server keeps its process
    assert (state_dir(server_root) / "mlflow.pid").read_text() == mlflow_pid
    client.log_metric(run_id, "loss", 3.0, step=2)  # the server's pool reconnects (pool_pre_ping)
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (2, 3.0)]


def sequential_latency(uri: str, n: int) -> list[float]:
    """Seconds per mlflow.log_metric call, `n` calls one at a time in one run (after one untimed warm-up call)."""
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment(f"latency-{time.time_ns()}")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("warmup", 0.0)
        times = []
        for step in range(n):
            begin = time.perf_counter()
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            times.append(time.perf_counter() - begin)
    assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "loss")) == n
    return times


def _log_worker(uri, run_id, n, barrier, results):
    """One client process (forked): `n` metrics, one request each, counting the failures."""
    errors, last_error, elapsed = 0, "", 0.0
    try:
        client = MlflowClient(uri)
        barrier.wait(timeout=120)
        begin = time.perf_counter()
        for step in range(n):
            try:
                client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
            except Exception as exc:
                errors, last_error = errors + 1, repr(exc)[:300]
        elapsed = time.perf_counter() - begin
    except BaseException as exc:
        errors, last_error = n, f"worker failed: {exc!r}"[:300]
    results.put((run_id, errors, elapsed, last_error))


def concurrent_logging(uri: str, processes: int, n: int) -> dict:
    """`processes` client processes at once (forked: no second import of mlflow), each logging `n` metrics to its
    own run; the errors, the wall time and whether every run holds its `n` points."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"concurrency-{processes}-{time.time_ns()}")
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(processes)]
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(processes + 1), context.Queue()
    workers = [context.Process(target=_log_worker, args=(uri, r, n, barrier, results)) for r in run_ids]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=120)
    begin = time.perf_counter()
    outcomes = [results.get(timeout=300) for _ in workers]
    wall = time.perf_counter() - begin
    for worker in workers:
        worker.join(timeout=30)
    complete = all(len(client.get_metric_history(r, "loss")) == n for r in run_ids)
    return {
        "processes": processes,
        "errors": sum(o[1] for o in outcomes),
        "last_error": next((o[3] for o in outcomes if o[3]), ""),
        "wall_s": wall,
        "per_call_ms": 1000 * statistics.mean(o[2] / n for o in outcomes),
        "metrics_per_s": processes * n / wall,
        "complete": complete,
        "exitcodes": [w.exitcode for w in workers],
    }


def test_latency_and_concurrency(server_uri, tmp_path):
    server = sequential_latency(server_uri, N_SEQUENTIAL)
    sqlite = sequential_latency(f"sqlite:///{tmp_path / 'mlflow.db'}", N_SEQUENTIAL)

    def summary(times):
        return (
            f"median {1000 * statistics.median(times):.1f} ms, mean {1000 * statistics.mean(times):.1f} ms, "
            f"p95 {1000 * sorted(times)[int(0.95 * len(times))]:.1f} ms"
        )

    print(f"\n[server] mlflow.log_metric x{N_SEQUENTIAL}, one at a time (cores: {os.cpu_count()})")
    print(f"[server]   tracking server (PostgreSQL): {summary(server)}")
    print(f"[server]   local sqlite:///:            {summary(sqlite)}")
    outcomes = [concurrent_logging(server_uri, processes, N_PER_WORKER) for processes in CONCURRENCY]
    for o in outcomes:
        print(
            f"[server]   {o['processes']} processes x {N_PER_WORKER} metrics at once: {o['errors']} errors, "
            f"{o['wall_s']:.2f} s, {o['metrics_per_s']:.0f} metrics/s, {o['per_call_ms']:.1f} ms per call, "
            f"all stored: {o['complete']}" + (f" (last error: {o['last_error']})" if o["errors"] else "")
        )
    assert statistics.median(server) < 1.0
    for o in outcomes:
        assert o["errors"] == 0 and o["complete"], o
        assert o["exitcodes"] == [0] * o["processes"], o


def test_mlflow_server_down_then_back(server_root, server_uri, monkeypatch):
    client = MlflowClient(server_uri)
    experiment_id = client.create_experiment("mlflow-down")
    stop_mlflow(server_root)
    try:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        begin = time.perf_counter()
        with pytest.raises(MlflowException) as down:
            client.get_experiment(experiment_id)
        took = time.perf_counter() - begin
        print(f"\n[server] MLflow server down: the client failed after {took:.2f} s: {str(down.value)[:160]}")
        assert took < 15
    finally:
        begin = time.perf_counter()
        assert start_mlflow(server_root) == server_uri
        print(f"[server] MLflow server back after {time.perf_counter() - begin:.1f} s")
    assert MlflowClient(server_uri).get_experiment(experiment_id).name == "mlflow-down"
