"""The runner for hosts without DVC or MLflow: the stages a target needs, in order, with a recipe's params."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from stage_helpers import REPO, copy_repo

from realfake.errors import ParamsError
from realfake.pipeline.runner import expand_stages, plan


def test_plan_runs_what_a_target_needs_in_order():
    stages = expand_stages(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    assert plan(stages, ["evaluate@fast"]) == ["check_params", "download", "prepare", "train@fast", "evaluate@fast"]
    needed = plan(stages, ["cross_evaluate"])
    assert needed[-1] == "cross_evaluate" and {"train_3class@efficientnet_3class", "train_3class@fast_3class"} <= set(
        needed
    )
    with pytest.raises(ParamsError, match="no stage 'train@nope'"):
        plan(stages, ["train@nope"])


def test_runner_runs_stages_without_dvc_or_mlflow(tmp_path, cifake_zip):
    work = tmp_path / "repo"
    env = copy_repo(work, cifake_zip)
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "realfake.pipeline.runner", "prepare", "--set", "prepare.per_class=10",
         "--set", "prepare.augment=[]", "--root", str(work)],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(work / "data" / "prepared" / "train.npz") as train:
        assert len(train["labels"]) == 16  # 10 per class, 2 held out for validation, no stored copies
    assert json.loads((work / "metrics" / "prepare.json").read_text())["sampled_per_class"] == 10
    assert not (work / "mlflow.db").exists() and not (work / "dvc.lock").exists()
