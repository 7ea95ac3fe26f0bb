"""MLflow runs per stage: params, metrics, tags, FAILED on error, and the store location under dvc exp."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from realfake import tracking


def runs(uri, experiment="t"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_finished_run_logs_params_metrics_tags_and_artifacts(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brave-newt")
    report = tmp_path / "report.json"
    report.write_text("{}")
    with tracking.stage_run("prepare", repo_root=tmp_path, experiment="t", params={"prepare": {"per_class": 5}}):
        tracking.log_metrics({"counts": {"train": {"real": 3}}, "name": "text is skipped"})
        tracking.log_metrics({"loss": 0.5}, step=2)
        tracking.log_artifacts(report)
    client, (run,) = runs(mlflow_uri)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"prepare.per_class": "5"}
    metrics = run.data.metrics
    assert metrics.pop("stage.wall_seconds") >= 0 and metrics.pop("stage.peak_rss_mb") > 10
    assert metrics == {"counts.train.real": 3.0, "loss": 0.5}
    assert run.data.tags["stage"] == "prepare" and run.data.tags["dvc_exp_name"] == "brave-newt"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.json"]
    assert str(tmp_path) in run.info.artifact_uri  # beside the store, never in a temporary exp copy


def test_failed_stage_marks_run_failed(mlflow_uri, tmp_path):
    with pytest.raises(RuntimeError), tracking.stage_run("train", repo_root=tmp_path, experiment="t", params={}):
        raise RuntimeError("boom")
    _, (run,) = runs(mlflow_uri)
    assert run.info.status == "FAILED"
    assert mlflow.active_run() is None


def test_default_store_is_in_main_repo_also_for_temp_exp_copies(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    copy = tmp_path / "main" / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert tracking.tracking_uri(copy) == f"sqlite:///{(tmp_path / 'main').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(copy) == "http://127.0.0.1:5000"
