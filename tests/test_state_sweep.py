"""After a stage succeeds, the state that failed or abandoned runs of it left (other fingerprints) and their 0-byte lock
files are removed; `make clean-state` removes all of it; a state a running training holds is kept."""

import fcntl
import subprocess

from stage_helpers import REPO

from realfake.paths import ProjectPaths
from realfake.pipeline import clean_state
from realfake.pipeline.stage import _sweep_after_success, sweep_stale_state


def test_unheld_state_and_orphan_locks_go_a_held_one_stays(tmp_path):
    folder = tmp_path / "train" / "fast"
    for name in ("failed", "running"):
        (folder / name).mkdir(parents=True)
        (folder / name / "progress.json").write_text("{}")
        (folder / f"{name}.lock").touch()
    (folder / "orphan.lock").touch()
    with open(folder / "running.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as locked_state does while a training runs
        removed = sweep_stale_state(folder)
    assert sorted(p.name for p in removed) == ["failed", "failed.lock", "orphan.lock"]
    assert sorted(p.name for p in folder.iterdir()) == ["running", "running.lock"]
    assert sweep_stale_state(tmp_path / "none") == []


def test_only_the_succeeded_stages_own_folder_is_swept(tmp_path):
    paths = ProjectPaths(tmp_path)
    for model in ("fast", "cnn"):
        (paths.state / "train" / model / "old").mkdir(parents=True)
        (paths.state / "train" / model / "old.lock").touch()
    _sweep_after_success(paths, "train", "fast")
    assert not (paths.state / "train" / "fast" / "old").exists()
    assert (paths.state / "train" / "cnn" / "old").is_dir()  # another model's interrupted run may resume
    _sweep_after_success(paths, "evaluate", "cnn")  # keeps no state: touches nothing
    assert (paths.state / "train" / "cnn" / "old").is_dir()


def _state(root, *parts):
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text("{}")
    folder.with_name(folder.name + ".lock").touch()
    return folder


def test_clean_state_forgets_every_unheld_state_also_under_realfake_state_dir(tmp_path, monkeypatch):
    repo, shared = tmp_path / "repo", tmp_path / "shared-state"
    monkeypatch.setenv("REALFAKE_STATE_DIR", str(shared))
    interrupted = _state(shared, "train", "fast", "abc")
    running = _state(shared, "train", "cnn", "def")
    local = _state(repo, ".cache", "state", "train_dcgan", "123")
    copy = _state(repo, ".dvc", "tmp", "exps", "run", "x1", ".cache", "state", "train", "fast", "456")
    (repo / ".cache" / "downloads").mkdir(parents=True)
    (repo / ".cache" / "downloads" / "cifake.zip.part").write_bytes(b"half")
    with open(running.with_name("def.lock"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a training that still runs
        assert clean_state.main([str(repo)]) == 0
    for gone in (interrupted, local, copy):
        assert not gone.exists() and not gone.with_name(gone.name + ".lock").exists()
    assert (running / "progress.json").is_file() and running.with_name("def.lock").exists()
    assert not (repo / ".cache" / "downloads").exists()
    assert not (shared / "train" / "fast").exists()  # emptied folders go too


def test_make_clean_state_runs_the_cleaner():
    dry = subprocess.run(["make", "-n", "clean-state"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "-m realfake.pipeline.clean_state" in dry.stdout, dry.stdout + dry.stderr
