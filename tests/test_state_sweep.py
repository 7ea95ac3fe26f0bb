"""After a stage succeeds, the state that failed or abandoned runs of it left (other fingerprints) and their 0-byte lock
files are removed; a state a running training holds is kept."""

import fcntl

from realfake.paths import ProjectPaths
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
