"""The MLflow model registry: what the train stages register, loaded back as a pyfunc and served over HTTP."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import realfake
from realfake.data.sources import sha256_of
from realfake.errors import DataError
from realfake.evaluation import scoring
from realfake.models.detector import DetectorInfo, info_path, save_info, with_calibration
from realfake.models.fast import build_fast
from realfake.models.saving import save_model
from realfake.pipeline import model_registry, tracking
from realfake.serving import predict

NAME = "realfake-tiny"
IMAGE_SHAPE = (32, 32, 3)


def tiny_fast(seed: int):
    """A tiny fast model, flip TTA included (custom layers and all), with a `Calibration` layer as a stage saves it."""
    model = build_fast(input_shape=IMAGE_SHAPE, stage_filters=(4, 8), convs_per_stage=1, space_to_depth=1,
                       dropout=0.0, flip_tta=True, tta_max_shift=0, seed=seed)  # fmt: skip
    return with_calibration(model, 1.5)


def detector_info(features: int) -> DetectorInfo:
    return DetectorInfo(
        temperature=1.5, operating_points={"fpr_0.01": {"max_fpr": 0.01, "threshold": 0.9, "fpr": 0.01, "recall": 0.5}},
        ood_means=np.zeros((2, features), np.float32), ood_precision=np.eye(features, dtype=np.float32),
        ood_cutoff=10.0, ood_percentile=99.0, fitted_on={},
    )  # fmt: skip


@pytest.fixture
def shipped_detector_in_package(tmp_path, monkeypatch) -> Path:
    """A copy of realfake's package holding a shipped detector (serving/detector/<name>/fast.keras and its extras),
    as the installed package will: the code log_registered_model copies into every registered model."""
    package = tmp_path / "package" / "realfake"
    shutil.copytree(Path(realfake.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    shipped = package / "serving" / "detector" / "demo"
    shipped.mkdir(parents=True, exist_ok=True)
    save_model(tiny_fast(seed=9), shipped / "fast.keras")
    save_info(info_path(shipped / "fast.keras"), detector_info(8))
    monkeypatch.setattr(realfake, "__file__", str(package / "__init__.py"))
    return shipped


def register(model_file: Path, *, val_accuracy: float, root: Path, extras: bool = True):
    """(run, ModelInfo) of model_file registered as NAME, from a train run, with its detector extras as a stage does."""
    extra = {"detector": info_path(model_file)} if extras else {}
    with tracking.stage_run("train", repo_root=root, experiment="registry-test", params={"model": "tiny"}) as run:
        info = model_registry.log_registered_model(
            model_file, registered_name=NAME, class_names=("real", "fake"), image_shape=IMAGE_SHAPE, batch_size=8,
            summary={"best": {"val_accuracy": val_accuracy}, "epochs": 3, "machine": "a test"},
            selection_metric="best.val_accuracy", extra_artifacts=extra,
        )  # fmt: skip
    return run, info


def saved_model(folder: Path, name: str, seed: int):
    model = tiny_fast(seed)
    path = folder / f"{name}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    save_info(info_path(path), detector_info(8))
    return model, path


@pytest.fixture
def registered(tmp_path, mlflow_uri, shipped_detector_in_package):
    """A tiny fast model saved with its detector extras, logged and registered as the train stage does."""
    model, path = saved_model(tmp_path / "models", "tiny", seed=0)
    run, info = register(path, val_accuracy=0.75, root=tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (5, *IMAGE_SHAPE), dtype=np.uint8)
    expected = scoring.predict_proba(model, images, batch_size=8)
    return {"uri": mlflow_uri, "run_id": run.info.run_id, "info": info, "images": images, "expected": expected,
            "path": path}  # fmt: skip


def test_registered_version_has_signature_tags_and_loads_as_pyfunc(registered):
    client = MlflowClient(registered["uri"])
    (version,) = client.search_model_versions(f"name='{NAME}'")
    assert int(version.version) == 1 and version.run_id == registered["run_id"]
    signature = mlflow.models.get_model_info(f"models:/{NAME}/1").signature  # as stored in the registry
    (spec,) = signature.inputs.inputs
    assert (spec.name, spec.type, tuple(spec.shape)) == ("images", np.dtype("uint8"), (-1, 32, 32, 3))
    assert signature.outputs.input_names() == ["p_real", "p_fake"]
    # The summary's numbers (nested keys joined with '.'), the file's sha256 and the run tag the version.
    assert version.tags["best.val_accuracy"] == "0.75" and version.tags["epochs"] == "3"
    assert "machine" not in version.tags
    assert version.tags["model_sha256"] == sha256_of(registered["path"])
    assert version.tags["run_id"] == registered["run_id"]
    assert str(client.get_model_version_by_alias(NAME, model_registry.CHAMPION).version) == "1"  # the first is champion

    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@{model_registry.CHAMPION}")
    scores = pyfunc.predict(registered["images"])
    assert list(scores.columns) == ["p_real", "p_fake"]
    np.testing.assert_allclose(scores.to_numpy(), registered["expected"], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="uint8|images"):  # the signature refuses floats
        pyfunc.predict(registered["images"].astype(np.float32) / 255)


def test_champion_moves_only_to_a_better_validation_score_and_evaluate_tags_its_version(registered, tmp_path):
    client = MlflowClient(registered["uri"])
    _, worse = saved_model(tmp_path / "worse", "tiny", seed=1)
    register(worse, val_accuracy=0.70, root=tmp_path, extras=False)
    assert str(client.get_model_version_by_alias(NAME, model_registry.CHAMPION).version) == "1"
    _, better = saved_model(tmp_path / "better", "tiny", seed=2)
    register(better, val_accuracy=0.80, root=tmp_path, extras=False)
    assert str(client.get_model_version_by_alias(NAME, model_registry.CHAMPION).version) == "3"

    # evaluate finds the version by the model file's sha256 (versions 1 and 3 share a file name, not the bytes)
    assert model_registry.tag_evaluated_version(NAME, worse, {"test_accuracy": 0.625}) == "2"
    assert client.get_model_version(NAME, "2").tags["test_accuracy"] == "0.625"
    assert "test_accuracy" not in client.get_model_version(NAME, "3").tags
    (tmp_path / "other.keras").write_bytes(b"no version holds these bytes")
    assert model_registry.tag_evaluated_version(NAME, tmp_path / "other.keras", {"test_accuracy": 1.0}) is None
    assert model_registry.tag_evaluated_version("realfake-none", worse, {"test_accuracy": 1.0}) is None


def test_realfake_predict_reads_the_registered_keras_file_and_its_detector(registered, tmp_path):
    for uri in (f"models:/{NAME}/1", f"models:/{NAME}@{model_registry.CHAMPION}"):
        dst = tmp_path / f"dl{len(uri)}"
        path, extras = predict.download_model_files(uri, tracking_uri=registered["uri"], dst=dst)
        assert (path.name, extras.name) == ("tiny.keras", "tiny.detector.npz")
        assert (path.parent.name, extras.parent.name) == ("artifacts", "artifacts")
        # realfake's code travels with the model (its custom layers), the detector shipped inside the package not
        assert list(dst.rglob("realfake/models/layers.py")) and not list(dst.rglob("fast.keras"))
        loaded = predict.load_named_model(uri, tracking_uri=registered["uri"])
        assert (loaded.name, loaded.source) == (uri, uri) and loaded.info is not None
        assert loaded.info.operating_points["fpr_0.01"]["threshold"] == 0.9
        probabilities = scoring.predict_proba(loaded.model, registered["images"], batch_size=8)
        np.testing.assert_allclose(probabilities, registered["expected"], rtol=1e-5, atol=1e-6)


def test_realfake_predict_passes_over_the_code_a_logged_model_carries(tmp_path, mlflow_uri):
    """A version logged with realfake's whole package as its code (before the registry left the shipped detector
    out) holds two .keras files: the model in artifacts/, the shipped detector in code/. The first is the model."""
    logged = tmp_path / "logged"
    shipped = logged / "code" / "realfake" / "serving" / "detector"
    shipped.mkdir(parents=True)
    (logged / "artifacts").mkdir()
    (logged / "MLmodel").write_text("flavors: {python_function: {code: code}}\n")
    for folder, name in ((logged / "artifacts", "tiny"), (shipped, "fast")):
        (folder / f"{name}.keras").write_bytes(b"stands in for a model")
        (folder / f"{name}.detector.npz").write_bytes(b"stands in for its extras")
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("registry-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(logged), artifact_path="model")
    client.set_terminated(run.info.run_id)
    dst = tmp_path / "dl"
    path, extras = predict.download_model_files(f"runs:/{run.info.run_id}/model", tracking_uri=mlflow_uri, dst=dst)
    assert (path, extras) == (
        dst / "model" / "artifacts" / "tiny.keras",
        dst / "model" / "artifacts" / "tiny.detector.npz",
    )
    # Without an MLmodel beside it, a folder named code is an ordinary folder of the artifact.
    (logged / "MLmodel").unlink()
    client.log_artifacts(run.info.run_id, str(logged), artifact_path="plain")
    with pytest.raises(DataError, match=r"holds several .keras files \(artifacts/tiny.keras, code/realfake/serv"):
        predict.download_model_files(f"runs:/{run.info.run_id}/plain", tracking_uri=mlflow_uri, dst=tmp_path / "d2")


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


def data_metrics(root: Path, *, archive: str = "a" * 64, val: int = 250, test: int = 5000) -> None:
    """What the download and prepare stages record about the data (metrics/data.json, metrics/prepare.json)."""
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "data.json").write_text(json.dumps({"sha256": archive, "images": 90000}))
    counts = {"train": {"real": 9, "fake": 9}, "val": {"real": val, "fake": val}, "test": {"real": test, "fake": test}}
    prepare = {"counts": counts, "sizes": {k: v["real"] * 2 for k, v in counts.items()}}
    (root / "metrics" / "prepare.json").write_text(json.dumps(prepare))


def register_on(root: Path, seed: int, val_accuracy: float, **data) -> str:
    """Register a model saved under root/models, its data described by root/metrics; its version number."""
    data_metrics(root, **data)
    _, path = saved_model(root / "models", "tiny", seed=seed)
    _, info = register(path, val_accuracy=val_accuracy, root=root, extras=False)
    return str(info.registered_model_version)


def test_champion_never_moves_between_versions_evaluated_on_different_data(tmp_path, mlflow_uri):
    client = MlflowClient(mlflow_uri)

    def champion() -> str:
        return str(client.get_model_version_by_alias(NAME, model_registry.CHAMPION).version)

    assert register_on(tmp_path / "big", 0, 0.90, val=2500) == "1" and champion() == "1"
    version = client.get_model_version(NAME, "1")
    assert version.tags["data.val_images"] == "5000" and version.tags["data.archive_sha256"] == "a" * 64
    fingerprint = version.tags[model_registry.DATA_FINGERPRINT]
    # a higher score on 100 validation images, or on as many images of another archive, does not compare
    register_on(tmp_path / "small", 1, 0.99, val=50)
    register_on(tmp_path / "other", 2, 0.99, val=2500, archive="b" * 64)
    assert champion() == "1"
    assert client.get_model_version(NAME, "2").tags[model_registry.DATA_FINGERPRINT] != fingerprint
    # the same data: the better score wins
    assert register_on(tmp_path / "same", 3, 0.95, val=2500) == "4" and champion() == "4"
    assert client.get_model_version(NAME, "4").tags[model_registry.DATA_FINGERPRINT] == fingerprint
    # validated on more images of the same archive is still other data: the champion stays
    register_on(tmp_path / "bigger", 4, 0.999, val=5000)
    assert champion() == "4"


def test_the_rule_itself():
    same = {model_registry.DATA_FINGERPRINT: "f", model_registry.VAL_IMAGES: "500", "best.val_accuracy": "0.9"}
    assert model_registry.takes_champion(same, None, "best.val_accuracy")[0]
    assert not model_registry.takes_champion(same, same, "best.val_accuracy")[0]  # equal is not better
    small = {model_registry.DATA_FINGERPRINT: "g", model_registry.VAL_IMAGES: "100", "best.val_accuracy": "1.0"}
    assert model_registry.takes_champion(small, same, "best.val_accuracy") == (
        False, "validated on other data than the champion (its score does not compare)")  # fmt: skip
    assert model_registry.tag_value(0.93581234) == "0.93581234" and model_registry.tag_value(3.0) == "3"


def test_evaluate_gives_the_version_full_tags_and_logged_model_metrics_on_the_test_data(tmp_path, mlflow_uri):
    data_metrics(tmp_path)
    _, path = saved_model(tmp_path / "models", "tiny", seed=0)
    run, _ = register(path, val_accuracy=0.75, root=tmp_path, extras=False)
    client = MlflowClient(mlflow_uri)
    train_run = client.get_run(run.info.run_id)
    assert train_run.data.metrics["selected.val_accuracy"] == 0.75  # the selected epoch's values, named so
    with tracking.stage_run("evaluate", repo_root=tmp_path, experiment="registry-test", params={}) as evaluate:
        number = model_registry.tag_evaluated_version(NAME, path, {"test_accuracy": 0.93581234, "test_ece": 0.0123})
    version = client.get_model_version(NAME, number)
    assert version.tags["test_accuracy"] == "0.93581234" and version.tags["test_ece"] == "0.0123"  # not cut short
    logged = client.get_logged_model(version.model_id or version.tags[model_registry.MODEL_ID])
    metrics = {m.key: m for m in logged.metrics}
    assert metrics["test_accuracy"].value == 0.93581234
    assert metrics["test_accuracy"].dataset_name == "cifake-test"
    assert metrics["test_accuracy"].dataset_digest == version.tags[model_registry.DATA_FINGERPRINT]
    inputs = client.get_run(evaluate.info.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["cifake-test"]


def test_an_onnx_export_registers_with_the_onnx_flavour_and_serves_without_tensorflow(tmp_path, mlflow_uri):
    from realfake.models.onnx_export import export_onnx, keras_outputs

    model, path = saved_model(tmp_path / "models", "tiny", seed=0)
    onnx_file = path.with_suffix(".onnx")
    export_onnx(path, onnx_file)
    with tracking.stage_run("export", repo_root=tmp_path, experiment="registry-test", params={"model": "tiny"}):
        info = model_registry.log_registered_onnx(onnx_file, registered_name=f"{NAME}-onnx",
                                                  extra_artifacts={"detector": info_path(path)})  # fmt: skip
    version = MlflowClient(mlflow_uri).get_model_version(f"{NAME}-onnx", str(info.registered_model_version))
    assert version.tags["model_sha256"] == sha256_of(onnx_file)
    assert version.tags["source_sha256"] == sha256_of(path)
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}-onnx/{version.version}")
    assert "onnx" in loaded.metadata.flavors
    images = np.random.default_rng(0).integers(0, 256, (5, *IMAGE_SHAPE), dtype=np.uint8)
    got = loaded.predict({"images": images.astype(np.float32)})
    want = keras_outputs(model, images)
    np.testing.assert_allclose(got["p_fake"], want["p_fake"], atol=1e-5)
    assert got["features"].shape == want["features"].shape


def test_registering_a_model_prints_none_of_mlflows_notices(tmp_path, mlflow_uri, capfd, caplog):
    _, path = saved_model(tmp_path / "models", "quiet", seed=1)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register(path, val_accuracy=0.7, root=tmp_path)
    printed = {
        "stderr": capfd.readouterr().err,
        "log": caplog.text,
        "warnings": " ".join(f"{w.filename}:{w.lineno} {w.message}" for w in caught),
    }
    for notice in ("Add type hints", "CloudPickle", "Validating input example", "Successfully registered",
                   "Downloading artifacts"):  # fmt: skip
        assert not [where for where, text in printed.items() if notice in text], (notice, printed["warnings"][:3000])
    assert "registered" in caplog.text  # the stage's own line stays
