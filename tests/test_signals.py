"""Interrupted stages clean up: SIGTERM ends the MLflow run KILLED and removes temporary files, a stage dies with the
`dvc repro` that started it, and temporary files of a killed writer are removed by the next one."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from stage_helpers import REPO, copy_repo, sh, tiny_params, write_params, write_prepared

from realfake.fileio import atomic_path
from realfake.pipeline import process
from realfake.pipeline.process import Terminated


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.3)


def stage_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("realfake")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def started_training(root: Path) -> bool:
    """True once the first epoch is recorded in the training state."""
    return any((root / ".cache" / "state").rglob("progress.json"))


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp") if ".cache" not in p.parts]


def test_atomic_outputs_vanish_on_termination_and_after_a_killed_writer(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(Terminated), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Terminated("stopped by signal SIGTERM")
    assert not target.exists() and not list(target.parent.iterdir())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = target.parent / f".{target.name}.{int(dead.stdout)}.abc123.tmp"  # a SIGKILLed writer's folder
    stale.mkdir()
    (stale / target.name).write_text("half")
    alive = target.parent / f".{target.name}.{os.getppid()}.def456.tmp"  # a writer that still runs
    alive.mkdir()
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert target.read_text() == "{}" and not stale.exists() and alive.exists()


def test_sigterm_inside_a_shielded_store_call_is_raised_when_the_call_returns():
    previous = signal.getsignal(signal.SIGTERM)
    process.on_sigterm()
    finished = []
    try:
        with pytest.raises(Terminated), process.shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, inside the block
            finished.append("store write")
        assert finished == ["store write"]
        process.on_sigterm()
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_ends_a_training_stage_killed_and_resumable(tmp_path, mlflow_uri):
    write_prepared(tmp_path, sizes=(("train", 256), ("val", 32), ("test", 32)))
    args = write_params(tmp_path, tiny_params(**{"models.cnn": {"epochs": 200}}))
    shutil.copytree(REPO / "stages", tmp_path / "stages")
    stage = subprocess.Popen(
        ["sh", "stages/run.sh", "train", "--model", "cnn", "--params", str(args.params)],
        cwd=tmp_path, env=os.environ | {"DVC_ROOT": str(tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: started_training(tmp_path), 180, "the first epoch")
        stage.send_signal(signal.SIGTERM)
        out, _ = stage.communicate(timeout=60)
    finally:
        stage.kill()
    assert stage.returncode == 143, out[-2000:]
    assert b"MLflow run marked KILLED" in out
    [run] = stage_runs(mlflow_uri)
    assert run.info.status == "KILLED"
    assert not leftovers(tmp_path)
    assert not (tmp_path / "models" / "cnn.keras").exists()
    assert started_training(tmp_path)  # the state stays for the next run to resume


def test_a_stage_dies_with_the_dvc_repro_that_started_it(tmp_path, cifake_zip, mlflow_uri):
    work = tmp_path / "repo"
    env = copy_repo(work, cifake_zip) | {"MLFLOW_TRACKING_URI": mlflow_uri}
    params = tiny_params(data={"source": "archive", "archive": str(cifake_zip)}, **{"models.cnn": {"epochs": 500}})
    write_params(work, params)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "long cnn", cwd=work, env=env)
    write_prepared(work, sizes=(("train", 256), ("val", 32), ("test", 32)))  # what prepare would give, sooner
    previous = {work / "models" / "cnn.keras": b"the previous good model",
                work / "metrics" / "train" / "cnn.json": b'{"describes": "the previous good model"}\n'}  # fmt: skip
    for path, content in previous.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    sh(sys.executable, "-m", "dvc", "repro", "--single-item", "check_params", cwd=work, env=env)  # train@cnn's gate
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", "train@cnn"], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def trainers() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and b"stages/train.py" in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name)) if Path(os.readlink(proc / "cwd")) == work else None
            except OSError:
                continue
        return found

    try:
        wait_for(lambda: started_training(work), 240, "the first epoch")
        assert trainers()
        repro.send_signal(signal.SIGTERM)
        repro.wait(timeout=60)
        wait_for(lambda: not trainers(), 60, "the trainer to end with its dvc repro")
    finally:
        repro.kill()
        for pid in trainers():
            os.kill(pid, signal.SIGKILL)
    train = [r for r in stage_runs(mlflow_uri) if r.data.tags.get("stage") == "train"]
    assert [r.info.status for r in train] == ["KILLED"], [(r.info.status, r.data.tags) for r in train]
    assert {path: path.read_bytes() for path in previous} == previous  # `persist`: the last good outputs stay
    assert not leftovers(work)


def test_a_failed_stage_keeps_its_last_git_tracked_metrics(tmp_path, cifake_zip, mlflow_uri):
    work = tmp_path / "repo"
    env = copy_repo(work, cifake_zip) | {"MLFLOW_TRACKING_URI": mlflow_uri}
    sh(sys.executable, "-m", "dvc", "repro", "download", cwd=work, env=env)
    before = (work / "metrics" / "data.json").read_text()
    cifake_zip.write_bytes(b"not a zip any more")
    failed = subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", "download"], cwd=work, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert failed.returncode != 0 and "not a readable zip archive" in failed.stdout + failed.stderr
    assert (work / "metrics" / "data.json").read_text() == before  # `persist`: DVC did not delete it first
