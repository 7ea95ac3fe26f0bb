"""MLflow runs per stage: params, metrics, tags, parent runs per pipeline execution, FAILED/KILLED endings, store
trouble reported in one line, and the store location under dvc exp."""

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from realfake.pipeline import experiments, process, tracking
from realfake.pipeline import stage as stage_script


def runs(uri, experiment="t"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_finished_run_logs_params_metrics_tags_and_artifacts(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brave-newt")
    monkeypatch.delenv("DVC_STAGE", raising=False)  # not started by DVC: no parent run
    report = tmp_path / "report.json"
    report.write_text("{}")
    with tracking.stage_run("prepare", repo_root=tmp_path, experiment="t", params={"prepare": {"per_class": 5}}):
        tracking.log_metrics({"counts": {"train": {"real": 3}}, "name": "text is skipped", "a+b c": 1})
        tracking.log_metrics({"loss": 0.5}, step=2)
        tracking.set_tags({"best": {"val_accuracy": 0.75}}, prefix="summary.")
        tracking.log_artifacts(report)
    client, (run,) = runs(mlflow_uri)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"prepare.per_class": "5"}
    metrics = run.data.metrics
    assert metrics.pop("stage.wall_seconds") >= 0 and metrics.pop("stage.peak_rss_mb") > 10
    assert metrics == {"counts.train.real": 3.0, "loss": 0.5, "a_b_c": 1.0}  # names MLflow refuses are made safe
    assert run.data.tags["stage"] == "prepare" and run.data.tags["dvc_exp_name"] == "brave-newt"
    assert run.data.tags["summary.best.val_accuracy"] == "0.75"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.json"]
    assert str(tmp_path) in run.info.artifact_uri  # beside the store, never in a temporary exp copy


def test_failed_stage_marks_run_failed(mlflow_uri, tmp_path):
    with pytest.raises(RuntimeError), tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
        raise RuntimeError("boom")
    _, (run,) = runs(mlflow_uri)
    assert run.info.status == "FAILED"
    assert mlflow.active_run() is None


@pytest.mark.parametrize("signal_error", [KeyboardInterrupt, process.Terminated])
def test_interrupted_stage_marks_run_killed(mlflow_uri, tmp_path, signal_error):
    with pytest.raises(signal_error), tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
        raise signal_error("stop")
    _, (run,) = runs(mlflow_uri)
    assert run.info.status == "KILLED"


def test_stages_of_one_execution_share_a_parent_named_after_the_experiment(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "prepare")
    monkeypatch.setenv("DVC_EXP_NAME", "cpu-quick-seed42")
    monkeypatch.setattr(process, "execution_id", lambda: "123:456")  # both stages under one DVC process
    for stage in ("download", "prepare"):
        with tracking.stage_run(stage, repo_root=tmp_path, experiment="t", params={}):
            pass
    monkeypatch.setattr(process, "execution_id", lambda: "789:1")  # another `dvc exp run`
    monkeypatch.setenv("DVC_EXP_NAME", "cpu-quick-seed1")
    with pytest.raises(RuntimeError), tracking.stage_run("download", repo_root=tmp_path, experiment="t", params={}):
        raise RuntimeError("boom")
    _, every = runs(mlflow_uri)
    parents = {r.info.run_name: r for r in every if r.data.tags.get("realfake.kind") == "pipeline"}
    assert set(parents) == {"cpu-quick-seed42", "cpu-quick-seed1"}
    assert parents["cpu-quick-seed42"].info.status == "FINISHED"
    assert parents["cpu-quick-seed1"].info.status == "FAILED"  # the parent takes its last stage's outcome
    children = [r for r in every if r.data.tags.get("realfake.kind") != "pipeline"]
    by_parent = {}
    for run in children:
        by_parent.setdefault(run.data.tags["mlflow.parentRunId"], []).append(run.data.tags["stage"])
    assert sorted(by_parent[parents["cpu-quick-seed42"].info.run_id]) == ["download", "prepare"]
    assert by_parent[parents["cpu-quick-seed1"].info.run_id] == ["download"]


def test_a_run_left_running_by_a_dead_process_is_marked_failed(mlflow_uri, tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    monkeypatch.setattr(process, "identity", lambda p: f"{pid}:1" if p == os.getpid() else None)
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
        client = MlflowClient(mlflow_uri)
        mlflow.tracking.fluent._active_run_stack.get().clear()  # the process "dies" without ending its run
        raise KeyboardInterrupt
    (orphan,) = runs(mlflow_uri)[1]
    client.set_terminated(orphan.info.run_id, "RUNNING")
    monkeypatch.undo()
    with tracking.stage_run("evaluate", repo_root=tmp_path, experiment="t", params={}):
        pass
    _, every = runs(mlflow_uri)
    statuses = {r.data.tags["stage"]: r.info.status for r in every}
    assert statuses == {"train": "FAILED", "evaluate": "FINISHED"}


def test_a_corrupt_store_is_one_line_naming_it(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with (
        pytest.raises(tracking.TrackingStoreError) as raised,
        tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}),
    ):
        pass
    message = str(raised.value)
    assert str(db) in message and "mv " in message and "\n" not in message


def test_a_locked_database_is_waited_for_then_reported(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with tracking.stage_run("prepare", repo_root=tmp_path, experiment="t", params={}):
        pass  # creates the store
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing for a long time
    monkeypatch.setattr(tracking, "_with_retries", lambda action, **_: action())  # no retries: the test stays short
    try:
        started = time.monotonic()
        with (
            pytest.raises(tracking.TrackingStoreError, match=r"stayed locked by another process"),
            tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}),
        ):
            pass
        assert time.monotonic() - started < 120
    finally:
        holder.rollback()
        holder.close()


def test_a_held_store_lock_is_waited_for_with_a_message_then_times_out(tmp_path, monkeypatch, caplog):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    lock = open(f"{db}.lock", "a")  # noqa: SIM115  (held across the call below)
    fcntl.flock(lock, fcntl.LOCK_EX)
    monkeypatch.setattr(experiments, "LOCK_TIMEOUT_S", 1.0)
    try:
        with (
            caplog.at_level("INFO", logger="realfake.pipeline.experiments"),
            pytest.raises(tracking.TrackingStoreError, match=r"lock .*mlflow.db.lock stayed held for 1 s"),
            tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}),
        ):
            pass
        assert "waiting for the MLflow store lock" in caplog.text
        # released meanwhile: the stage goes on
        threading.Timer(0.5, lambda: fcntl.flock(lock, fcntl.LOCK_UN)).start()
        monkeypatch.setattr(experiments, "LOCK_TIMEOUT_S", 30.0)
        with tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
            pass
    finally:
        lock.close()


def test_default_store_is_in_main_repo_also_for_temp_exp_copies(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    copy = tmp_path / "main" / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert tracking.tracking_uri(copy) == f"sqlite:///{(tmp_path / 'main').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(copy) == "http://127.0.0.1:5000"


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_an_experiments_parent_run_carries_its_changes_recipe_and_headline_metrics(mlflow_uri, tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("prepare:\n  per_class: 2500\n  augment: [rot90]\nbase:\n  seed: 42\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (tmp_path / "params.yaml").write_text("prepare:\n  per_class: 100\n  augment: []\nbase:\n  seed: 42\n")  # -S ...
    for folder, data in {"evaluate": {"accuracy": 0.93581234, "roc_auc": 0.98, "calibration": {"ece": 0.011}},
                         "robustness": {"robust_accuracy": 0.725}}.items():  # fmt: skip
        (tmp_path / "metrics" / folder).mkdir(parents=True)
        (tmp_path / "metrics" / folder / "fast.json").write_text(json.dumps(data))
    monkeypatch.setenv("DVC_STAGE", "evaluate@fast")
    monkeypatch.setenv("DVC_EXP_NAME", "smoke-seed42")
    monkeypatch.setenv("REALFAKE_RECIPE", "smoke")
    monkeypatch.setattr(process, "execution_id", lambda: "123:456")
    with tracking.stage_run("evaluate", repo_root=tmp_path, experiment="t", params={"model": "fast"},
                            run_name="evaluate@fast"):  # fmt: skip
        pass
    client, every = runs(mlflow_uri)
    (parent,) = [r for r in every if r.data.tags.get("realfake.kind") == "pipeline"]
    (child,) = [r for r in every if r.data.tags.get("realfake.kind") != "pipeline"]
    assert child.info.run_name == "smoke-seed42/evaluate@fast"
    assert parent.info.run_name == "smoke-seed42" and parent.info.status == "FINISHED"
    assert parent.data.params == {"prepare.per_class": "100", "prepare.augment": "[]"}
    assert parent.data.tags["realfake.recipe"] == "smoke"
    assert parent.data.tags["realfake.changed"] == "prepare.augment=[], prepare.per_class=100"
    assert parent.data.metrics == {"fast.test_accuracy": 0.93581234, "fast.test_roc_auc": 0.98, "fast.test_ece": 0.011,
                                   "fast.robust_accuracy": 0.725}  # fmt: skip
    experiment = client.get_experiment_by_name("t")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs


TRAINER = """
import sys, time
from pathlib import Path
from realfake.pipeline import process, tracking
from realfake.pipeline import stage as stage_script
process.execution_id = lambda: "999:1"  # one `dvc exp run`
with tracking.stage_run("train", repo_root=Path(sys.argv[1]), experiment="t", params={}):
    print("training", flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_stage_leaves_no_running_run_behind(mlflow_uri, tmp_path, monkeypatch):
    env = os.environ | {"DVC_STAGE": "train@fast", "DVC_EXP_NAME": "killed-seed1", "MLFLOW_TRACKING_URI": mlflow_uri}
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    try:
        assert trainer.stdout.readline().strip() == "training"
        _, every = runs(mlflow_uri)
        assert sorted(r.info.status for r in every) == ["RUNNING", "RUNNING"]  # the stage and its parent
    finally:
        trainer.kill()  # SIGKILL: no finally block runs in the trainer
        trainer.wait(timeout=30)
    monkeypatch.setenv("DVC_STAGE", "prepare")
    monkeypatch.setenv("DVC_EXP_NAME", "next-seed1")
    monkeypatch.setattr(process, "execution_id", lambda: "1000:1")  # another experiment
    with tracking.stage_run("prepare", repo_root=tmp_path, experiment="t", params={}):
        pass
    _, every = runs(mlflow_uri)
    assert not [r.info.run_name for r in every if r.info.status == "RUNNING"]
    statuses = {r.info.run_name: r.info.status for r in every}
    assert statuses == {"killed-seed1": "FAILED", "killed-seed1/train": "FAILED", "next-seed1": "FINISHED",
                        "next-seed1/prepare": "FINISHED"}  # fmt: skip


def test_the_end_of_a_run_says_whether_the_store_took_it(mlflow_uri, tmp_path, monkeypatch):
    with pytest.raises(process.Terminated), tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
        raise process.Terminated("stopped by signal SIGTERM")
    assert tracking.last_end()["status"] == "KILLED" and tracking.last_end()["accepted"]
    assert stage_script._run_ending() == "MLflow run marked KILLED"

    def store_gone(*args, **kwargs):
        mlflow.tracking.fluent._active_run_stack.get().clear()
        raise ConnectionError("the store went away")

    monkeypatch.setattr(mlflow, "end_run", store_gone)  # a hiccup: a fresh client ends the run once more
    with pytest.raises(process.Terminated), tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
        raise process.Terminated("stopped by signal SIGTERM")
    assert tracking.last_end()["accepted"]
    assert MlflowClient(mlflow_uri).get_run(tracking.last_end()["run_id"]).info.status == "KILLED"

    monkeypatch.setattr(MlflowClient, "set_terminated", store_gone)  # gone for good
    with pytest.raises(process.Terminated), tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
        raise process.Terminated("stopped by signal SIGTERM")
    assert tracking.last_end()["accepted"] is False
    ending = stage_script._run_ending()
    assert "could not be marked KILLED" in ending and "marks it FAILED" in ending


def store_action(error: str, calls: list, fails: int | None = None):
    """An MLflow store write that raises MlflowException(error) on its first `fails` calls (all, if None), then
    returns "logged"; each call is appended to `calls`."""
    from mlflow.exceptions import MlflowException

    def action():
        calls.append(1)
        if fails is None or len(calls) <= fails:
            raise MlflowException(error)
        return "logged"

    return action


@pytest.mark.parametrize(
    "race",
    [
        'BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',
        "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest",
        "(sqlite3.OperationalError) database is locked",
    ],
)
def test_a_race_with_another_writer_is_retried_until_it_passes(race):
    calls = []
    assert tracking._with_retries(store_action(race, calls, fails=2), delay_s=0) == "logged"
    assert len(calls) == 3


def test_an_error_that_is_no_race_is_raised_at_once():
    from mlflow.exceptions import MlflowException

    calls = []
    with pytest.raises(MlflowException, match="not found"):
        tracking._with_retries(store_action("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found", calls), delay_s=0)
    assert len(calls) == 1


def test_a_race_that_persists_is_raised_after_the_last_attempt():
    from mlflow.exceptions import MlflowException

    calls = []
    with pytest.raises(MlflowException, match="duplicate key"):
        tracking._with_retries(
            store_action("duplicate key value violates unique constraint", calls), attempts=3, delay_s=0
        )
    assert len(calls) == 3
