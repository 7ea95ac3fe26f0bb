"""MLflow stores that cannot be used are refused before MLflow touches them, each with one line naming it: a folder
that does not exist (never created), a read-only file, another program's SQLite database (never written), a server
that does not answer (within seconds, not minutes)."""

import os
import socket
import sqlite3
import threading
import time

import pytest

from realfake.pipeline import experiments, stores, tracking


def open_stage(tmp_path):
    with tracking.stage_run("prepare", repo_root=tmp_path, experiment="t", params={}):
        pass


def test_a_store_in_a_folder_that_does_not_exist_is_refused_and_the_folder_not_created(tmp_path, monkeypatch):
    db = tmp_path / "typo" / "sub" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(tracking.TrackingStoreError, match=rf"folder {tmp_path / 'typo' / 'sub'} does not exist"):
        open_stage(tmp_path)
    assert not (tmp_path / "typo").exists()


def test_a_read_only_store_is_one_line_naming_the_file(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    open_stage(tmp_path)  # a working store first
    db.chmod(0o444)
    real_access = os.access
    # root may write any file; stand in for a user who may not
    monkeypatch.setattr(stores.os, "access", lambda p, mode: False if str(p) == str(db) else real_access(p, mode))
    with pytest.raises(tracking.TrackingStoreError) as raised:
        open_stage(tmp_path)
    message = str(raised.value)
    assert f"is read-only: the file {db} cannot be written" in message and "\n" not in message
    # what SQLite says when it finds out itself, later
    late = stores.problem(f"sqlite:///{db}", sqlite3.OperationalError("attempt to write a readonly database"))
    assert f"is read-only (file: {db})" in str(late)


def test_another_programs_sqlite_file_is_never_written(tmp_path, monkeypatch):
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE customers (name TEXT)")
        connection.execute("INSERT INTO customers VALUES ('ada')")
    connection.close()
    before = db.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(tracking.TrackingStoreError, match=r"SQLite database of another program \(tables: customers\)"):
        open_stage(tmp_path)
    assert db.read_bytes() == before
    assert not (tmp_path / "shop.db.lock").exists()


def test_an_empty_file_and_an_mlflow_database_are_accepted(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    db.touch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    open_stage(tmp_path)  # MLflow makes its tables in the empty file
    open_stage(tmp_path)  # and finds them the second time
    stores.check(f"sqlite:///{db}")


def silent_server():
    """A port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    return server, stop, held


def test_an_unreachable_server_fails_within_seconds_naming_its_uri(tmp_path, monkeypatch):
    server, stop, held = silent_server()
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        started = time.monotonic()
        with pytest.raises(tracking.TrackingStoreError) as raised:
            open_stage(tmp_path)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        server.close()
        for connection in held:
            connection.close()
    message = str(raised.value)
    assert uri in message and "cannot be reached" in message and "waited at most 2 s" in message
    assert "\n" not in message


def test_a_closed_port_fails_at_once_and_mlflow_gets_short_waits(tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below
    for name in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR"):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", "")  # so that the test's end restores what was there
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(tracking.TrackingStoreError, match=rf"http://127.0.0.1:{port} cannot be reached"):
        open_stage(tmp_path)
    assert time.monotonic() - started < 5
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


def test_an_experiment_created_by_a_parallel_stage_meanwhile_is_used(tmp_path, monkeypatch):
    """On a server, set_experiment creates the experiment; two queued experiments starting at once race for it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    real_set_experiment = mlflow.set_experiment
    calls = []

    def lose_the_race_once(name):
        calls.append(name)
        if len(calls) == 1:
            real_set_experiment(name)  # the other stage creates it ...
            raise MlflowException(f"Experiment '{name}' already exists.", error_code="RESOURCE_ALREADY_EXISTS")
        return real_set_experiment(name)

    monkeypatch.setattr(experiments, "artifact_root", lambda _uri: None)  # the server path: set_experiment creates
    monkeypatch.setattr(mlflow, "set_experiment", lose_the_race_once)
    experiment_id = experiments.use_experiment("raced", uri)
    assert calls == ["raced", "raced"]
    assert mlflow.get_experiment(experiment_id).name == "raced"


UNIQUE_VIOLATION = (
    'BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "experiment_tag_pk"'
)


def test_a_unique_violation_from_a_parallel_stage_counts_as_already_made(tmp_path, monkeypatch):
    """PostgreSQL behind a server reports the same race as a BAD_REQUEST naming the violated unique constraint."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    real_set_experiment = mlflow.set_experiment
    calls = []

    def lose_the_race_once(name):
        calls.append(name)
        if len(calls) == 1:
            real_set_experiment(name)
            raise MlflowException(UNIQUE_VIOLATION, error_code="BAD_REQUEST")
        return real_set_experiment(name)

    monkeypatch.setattr(experiments, "artifact_root", lambda _uri: None)
    monkeypatch.setattr(mlflow, "set_experiment", lose_the_race_once)
    experiment_id = experiments.use_experiment("raced", uri)
    assert calls == ["raced", "raced"]
    assert mlflow.get_experiment(experiment_id).tags[experiments.EXPERIMENT_KIND_TAG] == experiments.EXPERIMENT_KIND


def test_the_experiment_tag_written_by_a_parallel_stage_meanwhile_is_kept(tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("tagged")
    real_set_tag = mlflow.MlflowClient.set_experiment_tag

    def the_other_stage_tags_first(self, eid, key, value):
        real_set_tag(self, eid, key, value)
        raise MlflowException(UNIQUE_VIOLATION, error_code="BAD_REQUEST")

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", the_other_stage_tags_first)
    experiments._tag_kind(client, experiment_id)  # the tag is there: nothing to raise
    assert client.get_experiment(experiment_id).tags[experiments.EXPERIMENT_KIND_TAG] == experiments.EXPERIMENT_KIND

    def refused(self, eid, key, value):  # a real refusal, the tag never written: the error stands
        raise MlflowException(UNIQUE_VIOLATION, error_code="BAD_REQUEST")

    other = client.create_experiment("untagged")
    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", refused)
    with pytest.raises(MlflowException, match="UniqueViolation"):
        experiments._tag_kind(client, other)
