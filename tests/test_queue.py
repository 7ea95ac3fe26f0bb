"""Two experiments queued with `dvc exp run --queue` and run by `dvc queue start -j 2` both log completely to MLflow.

MLFLOW_TRACKING_URI is left unset, so the real user path is exercised: each queued experiment runs in a copy under
.dvc/tmp/exps, DVC sets DVC_ROOT to the main repo, and both write one `sqlite:///<main repo>/mlflow.db`.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from stage_helpers import copy_repo, sh

EXPERIMENTS = {"q-seed1": 1, "q-seed2": 2}  # DVC experiment name -> base.seed
STAGES = {"download": "data.json", "prepare": "prepare.json"}  # stage -> its metrics file, logged as artifact
DONE = {"Success", "Failed"}
QUEUE_TIMEOUT_S = 600  # two tiny download+prepare runs; generous because the 2 cores are shared


def dvc(*args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, env=env)


def queue_status(work: Path, env: dict) -> tuple[dict[str, str], bool]:
    """Experiment name -> status (Queued, Running, Success, Failed) from the `dvc queue status` table, and whether
    a worker is active."""
    out = dvc("queue", "status", cwd=work, env=env).stdout
    rows = [line.split() for line in out.splitlines()]
    status = {row[1]: row[-1] for row in rows if len(row) >= 4 and row[1] in EXPERIMENTS}
    return status, "Worker status: 0 active" not in out


def start_queue(work: Path, env: dict, jobs: int = 2) -> None:
    """`dvc queue start -j jobs`, returning once the workers are up.

    DVC forks each worker from the calling process, and the fork keeps its inherited stdout and stderr until the
    worker exits, so with pipes (capture_output) the call would last as long as every queued experiment. A file
    holds what it prints instead, and wait_for_queue bounds the run.
    """
    log = work.parent / "queue-start.log"
    with log.open("w") as out:
        result = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], cwd=work, env=env,
                                stdout=out, stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
    assert result.returncode == 0, f"dvc queue start failed:\n{log.read_text()[-4000:]}"


def wait_for_queue(work: Path, env: dict, timeout_s: float = QUEUE_TIMEOUT_S) -> dict[str, str]:
    """Poll `dvc queue status` until every experiment has ended; fail with the workers' logs after timeout_s."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, str] = {}
    restarts = idle_polls = 0
    while time.monotonic() < deadline:
        status, working = queue_status(work, env)
        if set(status) == set(EXPERIMENTS) and set(status.values()) <= DONE:
            return status
        idle_polls = 0 if working or "Queued" not in status.values() else idle_polls + 1
        if idle_polls >= 6 and restarts < 2:
            # no worker for 30 s with tasks still queued: a DVC worker can exit early (treeverse/dvc#10562), and
            # starting the queue again is what a user does; the experiments' own logging is what is tested here
            restarts, idle_polls = restarts + 1, 0
            start_queue(work, env)
        time.sleep(5)
    workers = {p.name: p.read_text(errors="replace")[-2000:] for p in (work / ".dvc" / "tmp" / "exps").rglob("*.out")}
    pytest.fail(
        f"queue not finished after {timeout_s:.0f}s: {status}\n"
        + "\n".join(f"--- {n}\n{t}" for n, t in workers.items())
    )


def assert_all_succeeded(work: Path, env: dict, status: dict[str, str]) -> None:
    """Fail with the tail of each failed experiment's log, so a CI failure says why."""
    failed = [name for name, state in status.items() if state != "Success"]
    if failed:
        logs = {name: dvc("queue", "logs", name, cwd=work, env=env).stdout[-4000:] for name in failed}
        pytest.fail(
            f"queued experiments did not all succeed: {status}\n" + "\n".join(f"--- {n}\n{t}" for n, t in logs.items())
        )


def shown_experiments(work: Path, env: dict) -> dict[str, dict]:
    """Our experiments as `dvc exp show --json` lists them under the committed baseline."""
    baselines = json.loads(dvc("exp", "show", "--json", cwd=work, env=env).stdout)
    found = {exp["name"]: exp for base in baselines for exp in base.get("experiments") or []}
    assert set(found) == set(EXPERIMENTS), list(found)
    return found


def processes_under(folder: Path) -> list[int]:
    """Pids of processes whose working folder lies in `folder`: the queue workers and their stage commands."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:  # gone, or not ours
            continue
        if cwd == folder or folder in cwd.parents:
            pids.append(int(proc.name))
    return pids


def stop_workers(work: Path, env: dict) -> None:
    """Stop the queue, then end whatever is still running in this temp repo, so no worker outlives the test."""
    subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "stop", "--kill"], cwd=work, env=env, capture_output=True, timeout=120
    )
    deadline = time.monotonic() + 30
    while (pids := processes_under(work)) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # ended on its own meanwhile
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def queue_repo(tmp_path, cifake_zip):
    """A committed temp copy of the repo with tiny params reading `data/cifake.zip` of the main repo by a relative
    path (git-ignored, so queued copies do not hold it); its env has the venv first on PATH and no MLflow URI."""
    work = tmp_path / "repo"
    env = copy_repo(work, "data/cifake.zip")  # MLFLOW_TRACKING_URI unset: the main repo's store
    cifake_zip.rename(work / "data" / "cifake.zip")
    yield work, env
    stop_workers(work, env)


@pytest.mark.slow
def test_two_queued_experiments_both_log_to_mlflow(queue_repo):
    work, env = queue_repo
    for name, seed in EXPERIMENTS.items():
        dvc("exp", "run", "--queue", "prepare", "-n", name, "-S", f"base.seed={seed}", cwd=work, env=env)
    start_queue(work, env)

    status = wait_for_queue(work, env)
    assert_all_succeeded(work, env, status)
    for name, exp in shown_experiments(work, env).items():
        assert exp["executor"]["state"] == "success", name
        data = exp["revs"][0]["data"]
        assert data["params"]["params.yaml"]["data"]["base"]["seed"] == EXPERIMENTS[name]
        assert data["metrics"]["metrics/prepare.json"]["data"]["counts"]["val"] == {"real": 4, "fake": 4}

    # one store in the main repo holds every run, and their artifacts outlive the deleted temporary copies
    db = work / "mlflow.db"
    assert db.is_file()
    assert not list((work / ".dvc" / "tmp").rglob("mlflow.db"))
    client = MlflowClient(f"sqlite:///{db}")
    params = yaml.safe_load((work / "params.yaml").read_text())
    experiment = client.get_experiment_by_name(params["base"]["mlflow_experiment"])
    every = client.search_runs([experiment.experiment_id])
    parents = {r.info.run_name: r for r in every if r.data.tags.get("realfake.kind") == "pipeline"}
    assert set(parents) == set(EXPERIMENTS)  # one parent run per experiment, named after it
    runs = [r for r in every if r.data.tags.get("realfake.kind") != "pipeline"]
    assert sorted(r.data.tags.get("dvc_exp_name") for r in runs) == sorted([*EXPERIMENTS] * len(STAGES))
    assert all(r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["dvc_exp_name"]].info.run_id for r in runs)

    for name, seed in EXPERIMENTS.items():
        own = {r.data.tags["stage"]: r for r in runs if r.data.tags["dvc_exp_name"] == name}
        assert sorted(own) == sorted(STAGES), name
        for stage, run in own.items():
            assert run.info.status == "FINISHED", (name, stage)
            assert "stage.wall_seconds" in run.data.metrics, (name, stage)  # logged last, just before the end
            artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
            assert artifacts == [STAGES[stage]], (name, stage, artifacts)
            assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(work / "mlartifacts")
        assert own["download"].data.params["data.archive"] == "data/cifake.zip"  # found in the main repo
        assert own["download"].data.metrics["counts.train.FAKE"] == 26
        assert own["prepare"].data.params["seed"] == str(seed)
        assert own["prepare"].data.params["prepare.per_class"] == "20"
        assert own["prepare"].data.metrics["counts.val.real"] == 4
