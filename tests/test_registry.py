"""The MLflow model registry: what the train stages register, loaded back as a pyfunc and served over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from realfake import evaluation, predict, tracking
from realfake.models.fast import build_fast

NAME = "realfake-tiny"


@pytest.fixture
def registered(tmp_path, mlflow_uri):
    """A tiny fast model (flip TTA included, custom layers and all) saved, logged and registered as in a stage."""
    model = build_fast(input_shape=(32, 32, 3), stage_filters=(4, 8), convs_per_stage=1, space_to_depth=1,
                       dropout=0.0, flip_tta=True, tta_max_shift=0, seed=0)  # fmt: skip
    path = tmp_path / "models" / "tiny.keras"
    path.parent.mkdir()
    model.save(path)
    with tracking.stage_run("train", repo_root=tmp_path, experiment="registry-test", params={"model": "tiny"}) as run:
        info = tracking.log_registered_model(
            path, registered_name=NAME, class_names=("real", "fake"), image_shape=(32, 32, 3), batch_size=8,
            metrics={"val_accuracy": 0.75, "nested": {"epochs": 3}},
        )  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    expected = evaluation.predict_proba(model, images, batch_size=8)
    return {"uri": mlflow_uri, "run_id": run.info.run_id, "info": info, "images": images, "expected": expected}


def test_registered_version_has_signature_metrics_and_loads_as_pyfunc(registered):
    client = MlflowClient(registered["uri"])
    (version,) = client.search_model_versions(f"name='{NAME}'")
    assert int(version.version) == 1 and version.run_id == registered["run_id"]
    signature = mlflow.models.get_model_info(f"models:/{NAME}/1").signature  # as stored in the registry
    (spec,) = signature.inputs.inputs
    assert (spec.name, spec.type, tuple(spec.shape)) == ("images", np.dtype("uint8"), (-1, 32, 32, 3))
    assert signature.outputs.input_names() == ["p_real", "p_fake"]
    logged = client.get_logged_model(registered["info"].model_id)
    metrics = {m.key: m.value for m in logged.metrics}
    assert metrics["val_accuracy"] == 0.75 and metrics["nested.epochs"] == 3.0

    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    scores = pyfunc.predict(registered["images"])
    assert list(scores.columns) == ["p_real", "p_fake"]
    np.testing.assert_allclose(scores.to_numpy(), registered["expected"], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="uint8|images"):  # the signature refuses floats
        pyfunc.predict(registered["images"].astype(np.float32) / 255)


def test_realfake_predict_reads_the_registered_keras_file(registered, tmp_path):
    path = predict.download_model_file(f"models:/{NAME}/1", tracking_uri=registered["uri"], dst=tmp_path / "dl")
    assert path.name == "tiny.keras"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


def test_mlflow_models_serve_answers_a_prediction_request(registered, tmp_path):
    port = free_port()
    venv_bin = Path(sys.executable).parent  # the server runs `uvicorn` from PATH
    log = (tmp_path / "serve.log").open("w")
    env = os.environ | {"MLFLOW_TRACKING_URI": registered["uri"], "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [str(venv_bin / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, timeout_s=120)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": registered["images"].tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    rows = answer["predictions"]
    assert [sorted(row) for row in rows] == [["p_fake", "p_real"]] * 5
    served = np.array([[row["p_real"], row["p_fake"]] for row in rows])
    np.testing.assert_allclose(served, registered["expected"], rtol=1e-5, atol=1e-6)
