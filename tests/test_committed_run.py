"""The committed run is HEAD's: in a fresh clone, `dvc status` finds no changed dependency, param or command (only
outputs that are not in the clone's cache), and `dvc.lock` holds every stage of `dvc.yaml`.

It checks the committed tree, not the working tree: after changing a stage's code or params, `make repro` and commit
`dvc.lock`, `metrics/`, `plots/` and `reports/` with the change."""

import json
import subprocess
import sys

import pytest
import yaml
from stage_helpers import REPO

MISSING = {"deleted", "not in cache"}


def git(*args, cwd=REPO):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if "dvc.lock" not in git("ls-tree", "--name-only", "HEAD").split():
        pytest.fail("dvc.lock is not committed: run `make repro` and commit dvc.lock, metrics/, plots/ and reports/")
    target = tmp_path_factory.mktemp("clone") / "realfake"
    git("clone", "-q", "--no-local", str(REPO), str(target), cwd=target.parent)
    return target


def stage_names(dvc_yaml: dict) -> set[str]:
    names = set()
    for name, stage in dvc_yaml["stages"].items():
        if "matrix" in stage:
            (values,) = stage["matrix"].values()  # every matrix here has one axis
            names |= {f"{name}@{value}" for value in values}
        else:
            names.add(name)
    return names


def test_the_lock_holds_every_stage(clone):
    expected = stage_names(yaml.safe_load((clone / "dvc.yaml").read_text()))
    locked = set(yaml.safe_load((clone / "dvc.lock").read_text())["stages"])
    assert expected - locked == set(), "stages never run by the committed `dvc repro`"


def _statuses(value) -> list[str]:
    return [f"params {key}: {status}" for key, status in value.items()] if isinstance(value, dict) else [value]


def changed_stages(clone) -> dict:
    """`dvc status` in `clone`: stage -> what changed beyond outputs missing from the clone's cache."""
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=clone, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    outputs = {out["path"] for stage in lock.values() for out in stage.get("outs", [])}
    changed = {}
    for stage, entries in json.loads(result.stdout or "{}").items():
        for entry in entries:
            if not isinstance(entry, dict) or not entry.keys() <= {"changed outs", "changed deps"}:
                changed.setdefault(stage, []).append(entry)  # a changed command or params, or a stage never run
                continue
            outs, deps = entry.get("changed outs", {}), entry.get("changed deps", {})
            # a params file's entry is {key: "modified"|"new"|"deleted"}, a file's is its status: flatten both
            statuses = {status for value in deps.values() for status in _statuses(value)}
            # a dependency may only be missing because it is an upstream output that the clone's cache lacks
            if set(outs.values()) - MISSING or statuses - MISSING or set(deps) - outputs:
                changed.setdefault(stage, []).append(entry)
    return changed


def test_a_fresh_clone_has_nothing_changed_but_missing_outputs(clone):
    changed = changed_stages(clone)
    assert changed == {}, "the committed run is not HEAD's: `make repro`, then commit dvc.lock and the metrics"


def test_editing_glue_or_model_code_reruns_only_what_it_computes(tmp_path):
    """A comment appended to the tracking or registry code changes no stage; one appended to a Keras layer leaves
    the data stages alone (and does re-run a training stage: the check can fail)."""
    target = tmp_path / "realfake"
    git("clone", "-q", "--no-local", str(REPO), str(target), cwd=tmp_path)
    src = target / "src" / "realfake"
    for glue in ("pipeline/tracking.py", "pipeline/model_registry.py", "serving/registry.py"):
        with open(src / glue, "a") as fh:
            fh.write("# an edit to the glue\n")
    assert changed_stages(target) == {}
    with open(src / "models" / "layers.py", "a") as fh:
        fh.write("# an edit to a Keras layer\n")
    changed = changed_stages(target)
    assert not {"download", "prepare"} & set(changed) and "train@fast" in changed
