"""The pipeline against a shared MLflow server on PostgreSQL: two queued experiments run concurrently and log
everything under their own parent runs; a server that goes away mid-stage gives a clear error and no run is left
RUNNING once it is back."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import running_server, server_tmp_dir, skip_unless_available, start_mlflow, stop_mlflow
from stage_helpers import REPO, copy_repo, sh, tiny_params, write_params, write_prepared
from test_queue import assert_all_succeeded, start_queue, stop_workers, wait_for_queue

from realfake.pipeline import tracking

pytestmark = pytest.mark.server

EXPERIMENTS = {"srv-seed1": 1, "srv-seed2": 2}
TARGETS = ["train@fast", "evaluate@fast"]
STAGES = ["download", "prepare", "train", "evaluate"]
SEEDED_STAGES = ["prepare", "train", "evaluate"]  # take base.seed, so each experiment runs them
QUEUE_TIMEOUT_S = 1500  # two tiny train+evaluate runs at once on 2 shared cores, each logging to the server


@pytest.fixture(scope="module")
def server():
    skip_unless_available()
    with server_tmp_dir() as root, running_server(root) as uri:
        yield root, uri


def pipeline_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("realfake")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_two_queued_experiments_log_everything_to_the_server(server, tmp_path, cifake_zip, monkeypatch):
    _, uri = server
    work = tmp_path / "repo"
    env = copy_repo(work, cifake_zip) | {"MLFLOW_TRACKING_URI": uri}
    import test_queue

    monkeypatch.setattr(test_queue, "EXPERIMENTS", EXPERIMENTS)
    try:
        for name, seed in EXPERIMENTS.items():
            sh(sys.executable, "-m", "dvc", "exp", "run", "--queue", *TARGETS, "-n", name, "-S", f"base.seed={seed}",
               cwd=work, env=env)  # fmt: skip
        start_queue(work, env)
        status = wait_for_queue(work, env, timeout_s=QUEUE_TIMEOUT_S)
        assert_all_succeeded(work, env, status)
    finally:
        stop_workers(work, env)

    client = MlflowClient(uri)
    every = pipeline_runs(uri)
    parents = {r.info.run_name: r for r in every if r.data.tags.get("realfake.kind") == "pipeline"}
    assert set(parents) == set(EXPERIMENTS)
    # download tracks only `data`, so an experiment that starts after the other has downloaded restores it from
    # DVC's run cache and runs (and logs) nothing for it; it runs at least once, and at most once per experiment
    downloads = [r for r in every if r.data.tags.get("stage") == "download" and r.data.tags.get("dvc_exp_name")]
    assert 1 <= len(downloads) <= len(EXPERIMENTS), [r.data.tags.get("dvc_exp_name") for r in downloads]
    for name in EXPERIMENTS:
        own = [r for r in every if r.data.tags.get("dvc_exp_name") == name and r.data.tags.get("stage") in STAGES]
        stages = sorted(r.data.tags["stage"] for r in own)
        assert stages in (sorted(STAGES), sorted(SEEDED_STAGES)), (name, stages)
        assert all(r.data.tags["mlflow.parentRunId"] == parents[name].info.run_id for r in own)
        assert all(r.info.status == "FINISHED" for r in [*own, parents[name]])
        by_stage = {r.data.tags["stage"]: r for r in own}
        assert "accuracy" in by_stage["evaluate"].data.metrics and "val_accuracy" in by_stage["train"].data.metrics
        artifacts = {a.path for a in client.list_artifacts(by_stage["evaluate"].info.run_id)}
        assert {"fast.json", "fast.txt", "roc.json", "robustness"} <= artifacts, artifacts
    versions = client.search_model_versions("name = 'realfake-fast'")
    assert len(versions) == 2 and {v.tags["dvc_exp_name"] for v in versions} == set(EXPERIMENTS)
    assert all("test_accuracy" in v.tags for v in versions)  # evaluate tagged each version it scored


def test_a_server_lost_mid_stage_gives_a_clear_error_and_leaves_nothing_running(server, tmp_path, monkeypatch):
    root, uri = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    write_prepared(tmp_path, sizes=(("train", 256), ("val", 32), ("test", 32)))
    args = write_params(tmp_path, tiny_params(**{"models.cnn": {"epochs": 60}}))
    shutil.copytree(REPO / "stages", tmp_path / "stages")
    stage = subprocess.Popen(["sh", "stages/run.sh", "train", "--model", "cnn", "--params", str(args.params)],
                             cwd=tmp_path, env=os.environ | {"DVC_ROOT": str(tmp_path)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not any((tmp_path / ".cache" / "state").rglob("progress.json")):
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        stop_mlflow(root)
        out, _ = stage.communicate(timeout=600)
    finally:
        if stage.poll() is None:
            stage.send_signal(signal.SIGTERM)
        start_mlflow(root)
    text = out.decode(errors="replace")
    assert stage.returncode == 1, text[-3000:]
    assert f"MLflow store {uri} cannot be reached" in text  # one line saying what to do, no traceback
    # the next stage that reaches the store marks the lost run FAILED: nothing stays RUNNING
    with tracking.stage_run("prepare", repo_root=tmp_path, experiment="realfake", params={}):
        pass
    assert not [r for r in pipeline_runs(uri) if r.info.status == "RUNNING"]
