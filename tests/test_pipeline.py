"""End to end: the real `dvc repro` in a temporary copy of the repo, on the synthetic archive, tiny params.

The default suite runs the pipeline with two of its five binary models (every stage script runs; the full matrix
costs about twice the time, mostly interpreter and TensorFlow start-ups); `-m slow` runs all five.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from stage_helpers import copy_repo, sh

ALL_BINARY = ("cnn", "efficientnet", "resnet50", "fast", "fast_robust")
THREE_CLASS = ("efficientnet_3class", "fast_3class")


@pytest.fixture
def repo_copy(tmp_path, cifake_zip, mlflow_uri):
    work = tmp_path / "repo"
    env = copy_repo(work, cifake_zip)
    env["MLFLOW_TRACKING_URI"] = mlflow_uri
    return work, env


def keep_models(work, env, keep: tuple[str, ...]) -> None:
    """Only `keep` of the binary models in this copy: dvc.yaml's matrices, model deps and plots, params' sections."""
    dropped = [m for m in ALL_BINARY if m not in keep]

    def mentions(text: str) -> bool:
        return any(f"/{m}." in text or f"/{m}/" in text or text.endswith(f"/{m}") for m in dropped)

    pipeline = yaml.safe_load((work / "dvc.yaml").read_text())
    for stage in pipeline["stages"].values():
        if "matrix" in stage and set(stage["matrix"]["model"]) <= set(ALL_BINARY):  # not train_3class's
            stage["matrix"]["model"] = list(keep)
        stage["deps"] = [d for d in stage["deps"] if not mentions(d)]
    plots = []
    for plot in pipeline["plots"]:
        if isinstance(plot, dict):
            ((name, spec),) = plot.items()
            spec["y"] = {f: cols for f, cols in spec["y"].items() if not mentions(f)}
        plots.append(plot)
    pipeline["plots"] = plots
    (work / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((work / "params.yaml").read_text())
    for name in dropped:
        del params["models"][name]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "fewer models", cwd=work, env=env)


def check_outputs(work, binary):
    data = json.loads((work / "metrics/data.json").read_text())
    assert data["counts"] == {"train": {"REAL": 24, "FAKE": 26}, "test": {"REAL": 24, "FAKE": 24}}
    assert data["duplicates"]["extra_copies_within_folder"]["train/FAKE"] == 2
    prepared = json.loads((work / "metrics/prepare.json").read_text())
    assert prepared["counts"]["val"] == {"real": 4, "fake": 4}
    assert prepared["counts"]["train"] == {"real": 48, "fake": 48}  # 16 per class x (original + rot90 + hflip)
    with np.load(work / "data/prepared/train.npz") as train:
        assert train["images"].shape == (96, 32, 32, 3) and train["images"].dtype == np.uint8

    trained = (*binary, *THREE_CLASS)
    for name in (*trained, "dcgan_generator"):
        assert (work / "models" / f"{name}.keras").is_file(), name
    for name in binary:
        assert (work / "models" / f"{name}.detector.npz").is_file(), name
        assert (work / "models" / f"{name}.onnx").is_file(), name  # export@<model>
        report = json.loads((work / f"metrics/evaluate/{name}.json").read_text())
        assert report["n"] == 48 and 0 <= report["accuracy"] <= 1
        assert 0 <= report["calibration"]["ece"] <= 1 and set(report["operating_points"]) == {"fpr_0.01", "fpr_0.05"}
        assert set(report["ood"]) >= {"cifake_test", "photo_crops", "cifake_downscaled_2x"}
        robust = json.loads((work / f"metrics/robustness/{name}.json").read_text())
        assert list(robust["scores"])[0] == "none" and "downscale_2+jpeg_75" in robust["scores"]
        assert robust["robust_accuracy"] == pytest.approx(
            np.mean([s["accuracy"] for k, s in robust["scores"].items() if k != "none"])
        )
    history = (work / "plots/train/fast.csv").read_text().splitlines()[0].split(",")
    assert "test_accuracy" in history and "train_minutes" in history  # the fast detector's test curve
    generated = json.loads((work / "metrics/generate.json").read_text())
    assert generated["train"]["images"] == 40 and generated["test"]["images"] == 20
    cross = json.loads((work / "metrics/cross_evaluate.json").read_text())
    assert set(cross["scores"]) == set(trained)
    assert all(set(by_source) == {"real", "sd_fake", "dcgan_fake"} for by_source in cross["scores"].values())
    assert cross["scores"]["cnn"]["dcgan_fake"]["n"] == 20 and cross["scores"]["cnn"]["real"]["n"] == 24
    assert set(cross["confusion"]) == set(THREE_CLASS) and set(cross["unseen_generator"]) == set(binary)
    assert 0 <= cross["unseen_generator"]["cnn"]["dcgan_fake"]["share_fake_or_ood"] <= 1
    quality = json.loads((work / "metrics/dcgan.json").read_text())["quality"]
    assert {
        "frechet_distance",
        "frechet_distance_untrained",
        "frechet_distance_real_vs_real",
        "diversity_ratio",
    } <= set(quality)
    assert "robust accuracy" in (work / "reports/robustness.md").read_text()
    for name in binary:
        assert (work / f"plots/explain/{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert json.loads((work / f"reports/explain/{name}.json").read_text())["model"] == name


def check_tracking(uri, binary):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("realfake")
    runs = client.search_runs([exp.experiment_id])
    stage_runs = [r for r in runs if r.data.tags.get("realfake.kind") != "pipeline"]
    [parent] = [r for r in runs if r.data.tags.get("realfake.kind") == "pipeline"]  # one `dvc repro`, one parent
    per_model = ["train", "evaluate", "explain", "export"] * len(binary)
    once = ["download", "prepare", "train_dcgan", "generate", "train_3class", "train_3class", "cross_evaluate",
            "robustness_report"]  # fmt: skip
    assert sorted(r.data.tags["stage"] for r in stage_runs) == sorted(per_model + once)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stage_runs)
    assert all(r.info.status == "FINISHED" for r in runs)
    registered = {m.name for m in client.search_registered_models()}
    assert registered == {f"realfake-{name}" for name in (*binary, *THREE_CLASS)} | {
        f"realfake-{name}-onnx" for name in binary
    }  # every train stage, and every export in MLflow's onnx flavour
    champion = client.get_model_version_by_alias("realfake-fast", "champion")
    assert "test_accuracy" in champion.tags  # evaluate tagged the version it scored
    [train_fast] = [r for r in stage_runs if r.info.run_name == "train@fast"]
    assert "summary.best.val_accuracy" in train_fast.data.tags  # summaries are tags, not one-point charts
    assert not any(k.startswith("final.") for k in train_fast.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(train_fast.info.run_id)}
    assert "fast.csv" in artifacts  # the per-epoch history


def dvc(*args, cwd, env):
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, env=env)


def check_remote_round_trip(work, env, tmp_path):
    """`dvc push` the run; a fresh clone's `dvc pull` gets models and data, nothing is stale, and predict and
    evaluate run there without training."""
    remote = tmp_path / "remote"
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=work, env=env)
    sh("git", "add", "-A", cwd=work, env=env)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run", cwd=work, env=env)
    dvc("push", cwd=work, env=env)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(work), str(clone), cwd=tmp_path, env=env)
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=clone, env=env)
    dvc("pull", cwd=clone, env=env)
    assert (clone / "models" / "fast.keras").is_file() and (clone / "data" / "prepared" / "test.npz").is_file()
    assert "up to date" in dvc("status", cwd=clone, env=env).stdout
    image = clone / "probe.png"
    with np.load(clone / "data" / "prepared" / "test.npz") as test:
        from PIL import Image

        Image.fromarray(test["images"][0]).save(image)
    predicted = sh(sys.executable, "-m", "realfake.serving.cli", "predict", str(image), "--format", "json",
                   cwd=clone, env=env)  # fmt: skip
    assert json.loads(predicted.stdout)[0]["resampled"] is False and "using model" in predicted.stderr
    ran = dvc("repro", "--force", "--single-item", "evaluate@fast", cwd=clone, env=env).stdout
    assert "Running stage 'evaluate@fast'" in ran and "train@" not in ran
    assert "up to date" in dvc("status", cwd=clone, env=env).stdout


def run_pipeline(work, env, mlflow_uri, binary):
    sh(sys.executable, "-m", "dvc", "repro", cwd=work, env=env, timeout=3600)
    check_outputs(work, binary)
    check_tracking(mlflow_uri, binary)

    plots = json.loads(sh(sys.executable, "-m", "dvc", "plots", "show", "--json", cwd=work, env=env).stdout)
    assert not plots.get("errors"), plots.get("errors")  # every declared plot file exists and parses
    assert {"Accuracy per epoch", "ROC on CIFAKE test", "DCGAN losses per epoch"} <= set(plots["data"])
    index = sh(sys.executable, "-m", "realfake.pipeline.plot_render", cwd=work, env=env).stdout.strip()
    page = (work / index).read_text()  # an absolute path stays itself under `/`
    assert page.count("data:image/png;base64,") >= 8 and "<script" not in page and "http" not in page  # offline
    metrics = sh(sys.executable, "-m", "dvc", "metrics", "show", cwd=work, env=env).stdout
    assert "metrics/cross_evaluate.json" in metrics and "metrics/robustness/fast.json" in metrics

    status = sh(sys.executable, "-m", "dvc", "status", cwd=work, env=env)
    assert "up to date" in status.stdout  # every dependency declared: a second repro has nothing to do


def check_untracked_typo_fails(work, env):
    """`dvc exp run -S +trian.epochs=3` (a key no training stage tracks) fails naming it, instead of finding every
    stage up to date, also when the run targets one stage; nothing else re-runs."""
    for target in (["train@fast"], []):
        result = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", *target, "-S", "+trian.epochs=3"],
                                cwd=work, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "Running stage 'check_params'" in output and "unknown section(s) trian" in output
        assert "Running stage 'train@" not in output
        sh("git", "checkout", "--", "params.yaml", cwd=work, env=env)


def test_dvc_repro_runs_the_pipeline(repo_copy, mlflow_uri, tmp_path):
    work, env = repo_copy
    keep_models(work, env, ("cnn", "fast"))
    run_pipeline(work, env, mlflow_uri, ("cnn", "fast"))
    check_remote_round_trip(work, env, tmp_path)
    check_untracked_typo_fails(work, env)


@pytest.mark.slow
def test_dvc_repro_runs_the_full_pipeline(repo_copy, mlflow_uri):
    work, env = repo_copy
    run_pipeline(work, env, mlflow_uri, ALL_BINARY)
