"""Data-parallel training through Keras' distribution API on the JAX backend (`train.strategy: data_parallel`):
two devices of one process, and two processes on 127.0.0.1 that train one model together, each against
single-device training with the same global batch."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from stage_helpers import REPO, tiny_params, write_params, write_prepared

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_S = 600


def jax_env(**extra) -> dict:
    env = os.environ | {"KERAS_BACKEND": "jax", "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}"} | extra
    env.pop("XLA_FLAGS", None)
    return env | extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_worker(strategy: str, state: Path, **env) -> dict:
    done = subprocess.run([sys.executable, str(WORKER), strategy, str(state)], env=jax_env(**env),
                          capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def launch(commands: list[list[str]], envs: list[dict], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start the processes together; if one fails, stop the others (they would wait for it in a collective)."""
    procs = [subprocess.Popen(c, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, e in zip(commands, envs, strict=True)]  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs):
        failed = any(p.poll() not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            break
        time.sleep(0.5)
    return [subprocess.CompletedProcess(p.args, p.wait(), *p.communicate()) for p in procs]


def test_two_devices_of_one_process_split_the_batch_and_match_one_device(tmp_path):
    single = run_worker("default", tmp_path / "single")
    both = run_worker("data_parallel", tmp_path / "two", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert single["devices"] == 1 and both["devices"] == 2
    assert both["layout"] == {"axes": ["batch", None, None, None], "mesh": [2]}  # the global batch split over both
    np.testing.assert_allclose(both["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(both["val_loss"], single["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(both["weights_head"], single["weights_head"], atol=1e-5)


def stage_project(folder: Path, strategy: str) -> Path:
    """A project folder with tiny prepared data and params for `train@fast` under `strategy`."""
    write_prepared(folder, sizes=(("train", 128), ("val", 64), ("test", 32)))
    params = tiny_params(train={"strategy": strategy}, **{"models.fast": {
        "epochs": 2, "batch_size": 32, "test_curve": False, "optimizer": "sgd", "schedule": "constant",
        "learning_rate": 0.05, "weight_decay": 0.0, "dropout": 0.0}})  # fmt: skip
    args = write_params(folder, params)
    shutil.copytree(REPO / "stages", folder / "stages")
    return args.params


def history(folder: Path) -> dict[str, list[float]]:
    lines = (folder / "plots" / "train" / "fast.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    return {key: [float(row[i]) for row in rows] for i, key in enumerate(header)}


@pytest.mark.multihost
def test_two_processes_train_one_model_and_only_the_chief_writes(tmp_path):
    command = ["sh", "stages/run.sh", "train", "--model", "fast"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    one = tmp_path / "one"
    params = stage_project(one, "data_parallel")  # one process, one device: the reference
    [alone] = launch([[*command, "--params", str(params)]], [jax_env(MLFLOW_TRACKING_URI=uri)], one)
    assert alone.returncode == 0, alone.stderr[-3000:]

    two = tmp_path / "two"
    params = stage_project(two, "data_parallel")
    port = free_port()
    cluster = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    envs = [jax_env(MLFLOW_TRACKING_URI=uri, KERAS_DISTRIBUTION_PROCESS_ID=str(i), **cluster) for i in (0, 1)]
    chief, worker = launch([[*command, "--params", str(params)]] * 2, envs, two)
    assert chief.returncode == 0 and worker.returncode == 0, (chief.stderr[-2000:], worker.stderr[-2000:])
    assert "2 device(s) in 2 process(es)" in chief.stderr

    np.testing.assert_allclose(history(two)["loss"], history(one)["loss"], rtol=1e-5)
    np.testing.assert_allclose(history(two)["val_loss"], history(one)["val_loss"], rtol=1e-5)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("realfake").experiment_id])
    assert len([r for r in runs if r.data.tags.get("stage") == "train"]) == 2  # one per project: chiefs only
    assert len(client.search_model_versions("name = 'realfake-fast'")) == 2
    assert (two / "models" / "fast.keras").is_file()
    assert not list((two / ".cache" / "state").rglob("progress.json"))  # every process cleaned its state up
