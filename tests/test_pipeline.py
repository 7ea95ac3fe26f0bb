"""End to end: the real `dvc repro` in a temporary copy of the repo, on the synthetic archive, tiny params."""

import json
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from stage_helpers import copy_repo, sh


@pytest.fixture
def repo_copy(tmp_path, cifake_zip, mlflow_uri):
    work = tmp_path / "repo"
    env = copy_repo(work, cifake_zip)
    env["MLFLOW_TRACKING_URI"] = mlflow_uri
    return work, env


def test_dvc_repro_runs_the_pipeline(repo_copy, mlflow_uri):
    work, env = repo_copy
    sh(sys.executable, "-m", "dvc", "repro", cwd=work, env=env)

    data = json.loads((work / "metrics/data.json").read_text())
    assert data["counts"] == {"train": {"REAL": 24, "FAKE": 26}, "test": {"REAL": 24, "FAKE": 24}}
    assert data["duplicates"]["extra_copies_within_folder"]["train/FAKE"] == 2
    prepared = json.loads((work / "metrics/prepare.json").read_text())
    assert prepared["counts"]["val"] == {"real": 4, "fake": 4}
    assert prepared["counts"]["train"] == {"real": 48, "fake": 48}  # 16 per class x (original + rot90 + hflip)
    with np.load(work / "data/prepared/train.npz") as train:
        assert train["images"].shape == (96, 32, 32, 3) and train["images"].dtype == np.uint8

    for name in ("cnn", "efficientnet", "resnet50", "fast", "efficientnet_3class", "dcgan_generator"):
        assert (work / "models" / f"{name}.keras").is_file(), name
    for name in ("cnn", "efficientnet", "resnet50", "fast"):
        report = json.loads((work / f"metrics/evaluate/{name}.json").read_text())
        assert report["n"] == 48 and 0 <= report["accuracy"] <= 1
    generated = json.loads((work / "metrics/generate.json").read_text())
    assert generated["train"]["images"] == 40 and generated["test"]["images"] == 20
    cross = json.loads((work / "metrics/cross_evaluate.json").read_text())
    assert set(cross["scores"]) == {"cnn", "efficientnet", "resnet50", "fast", "efficientnet_3class"}
    assert all(set(by_source) == {"real", "sd_fake", "dcgan_fake"} for by_source in cross["scores"].values())
    assert cross["scores"]["cnn"]["dcgan_fake"]["n"] == 20 and cross["scores"]["cnn"]["real"]["n"] == 24
    robust = json.loads((work / "metrics/robustness.json").read_text())
    assert set(robust["scores"]) == {"cnn", "efficientnet", "resnet50", "fast"}
    assert robust["perturbations"][0] == "none" and len(robust["perturbations"]) == 8
    assert all(s["n"] == 48 for by_name in robust["scores"].values() for s in by_name.values())
    for name in ("cnn", "efficientnet", "resnet50", "fast"):
        assert (work / f"plots/explain/{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert json.loads((work / f"reports/explain/{name}.json").read_text())["model"] == name

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("realfake")
    runs = client.search_runs([exp.experiment_id])
    per_model = ["train", "evaluate", "explain"] * 4  # cnn, efficientnet, resnet50, fast
    once = ["download", "prepare", "train_dcgan", "generate", "train_3class", "cross_evaluate", "robustness"]
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(per_model + once)
    registered = {m.name for m in client.search_registered_models()}
    trained = ("cnn", "efficientnet", "resnet50", "fast", "efficientnet_3class")
    assert registered == {f"realfake-{name}" for name in trained}  # every train stage registered its model
    assert all(r.info.status == "FINISHED" for r in runs)
    [three_run] = [r for r in runs if r.data.tags["stage"] == "train_3class"]
    dcgan_train = three_run.data.metrics["images.train.dcgan_fake"]
    assert dcgan_train > 0 and dcgan_train % 3 == 0  # DCGAN train images + their rot90 and hflip copies
    three = json.loads((work / "metrics/train/efficientnet_3class.json").read_text())
    assert three["train_images"] == 96 + dcgan_train  # the prepared real/SD train images + the DCGAN ones

    plots = json.loads(sh(sys.executable, "-m", "dvc", "plots", "show", "--json", cwd=work, env=env).stdout)
    assert not plots.get("errors"), plots.get("errors")  # every declared plot file exists and parses
    assert {"Accuracy per epoch", "ROC on CIFAKE test", "DCGAN losses per epoch"} <= set(plots["data"])
    metrics = sh(sys.executable, "-m", "dvc", "metrics", "show", cwd=work, env=env).stdout
    assert "metrics/cross_evaluate.json" in metrics and "metrics/evaluate/cnn.json" in metrics

    status = sh(sys.executable, "-m", "dvc", "status", cwd=work, env=env)
    assert "up to date" in status.stdout  # every dependency declared: a second repro has nothing to do
