"""End to end: the real `dvc repro` in a temporary copy of the repo, on the synthetic archive, tiny params."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from stage_helpers import tiny_params

REPO = Path(__file__).resolve().parents[1]
COPIED = ["stages", "src", "params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def shrink(archive: Path) -> dict:
    """Tiny sizes so the whole chain runs in minutes; structure and code paths stay the real ones."""
    params = tiny_params()
    params["data"].update(source="archive", archive=str(archive))
    return params


def sh(*cmd, cwd, env) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture
def repo_copy(tmp_path, cifake_zip, mlflow_uri):
    work = tmp_path / "repo"
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    params = shrink(cifake_zip)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("DVC_ROOT", None)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        sh(*cmd, cwd=work, env=env)
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

    for name in ("cnn", "efficientnet", "resnet50", "efficientnet_3class", "dcgan_generator"):
        assert (work / "models" / f"{name}.keras").is_file(), name
    for name in ("cnn", "efficientnet", "resnet50"):
        report = json.loads((work / f"metrics/evaluate/{name}.json").read_text())
        assert report["n"] == 48 and 0 <= report["accuracy"] <= 1
    generated = json.loads((work / "metrics/generate.json").read_text())
    assert generated["train"]["images"] == 40 and generated["test"]["images"] == 20
    cross = json.loads((work / "metrics/cross_evaluate.json").read_text())
    assert set(cross["scores"]) == {"cnn", "efficientnet", "resnet50", "efficientnet_3class"}
    assert all(set(by_source) == {"real", "sd_fake", "dcgan_fake"} for by_source in cross["scores"].values())
    assert cross["scores"]["cnn"]["dcgan_fake"]["n"] == 20 and cross["scores"]["cnn"]["real"]["n"] == 24

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("realfake")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(
        [
            "download",
            "prepare",
            "train",
            "train",
            "train",
            "evaluate",
            "evaluate",
            "evaluate",
            "train_dcgan",
            "generate",
            "train_3class",
            "cross_evaluate",
        ]
    )
    assert all(r.info.status == "FINISHED" for r in runs)

    plots = json.loads(sh(sys.executable, "-m", "dvc", "plots", "show", "--json", cwd=work, env=env).stdout)
    assert not plots.get("errors"), plots.get("errors")  # every declared plot file exists and parses
    assert {"Accuracy per epoch", "ROC on CIFAKE test", "DCGAN losses per epoch"} <= set(plots["data"])
    metrics = sh(sys.executable, "-m", "dvc", "metrics", "show", cwd=work, env=env).stdout
    assert "metrics/cross_evaluate.json" in metrics and "metrics/evaluate/cnn.json" in metrics

    status = sh(sys.executable, "-m", "dvc", "status", cwd=work, env=env)
    assert "up to date" in status.stdout  # every dependency declared: a second repro has nothing to do
