"""ONNX export: the exported graph gives what the Keras model gives (P(fake) within 1e-5, the same label at every
operating point, the OOD features), records the .keras file's SHA-256, and the shipped detector's export is current."""

import ast
import hashlib
import io
import json

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from stage_helpers import REPO

from realfake.evaluation import ood
from realfake.evaluation.scoring import p_fake, predict_proba
from realfake.models import onnx_export
from realfake.models.cnn import build_cnn
from realfake.models.detector import info_path, load_info, with_calibration
from realfake.models.fast import build_fast
from realfake.models.saving import save_model
from realfake.models.transfer import build_efficientnet
from realfake.serving import models as serving_models

TOLERANCE = 1e-5
THRESHOLDS = (0.05, 0.1665, 0.25, 0.5, 0.75, 0.796, 0.95)  # generic points plus the shipped detector's


def fixed_images() -> np.ndarray:
    """Seeded noise, flat colours and CIFAKE-like JPEG pixels: 40 uint8 32x32 RGB images."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    flat = np.stack(
        [np.full((32, 32, 3), v, np.uint8) for v in (0, 60, 128, 200, 255)]
        + [np.full((32, 32, 3), c, np.uint8) for c in ((30, 200, 60), (250, 10, 10), (10, 10, 250))]
    )
    smooth = np.stack([np.clip(np.add.outer(np.arange(32), np.arange(32)) * k, 0, 255).astype(np.uint8)[..., None]
                       .repeat(3, axis=2) for k in (1, 2, 3, 4, 5, 6, 7, 8)])  # fmt: skip
    return np.concatenate([noise, flat, smooth])


def build(kind: str) -> keras.Model:
    keras.utils.set_random_seed(3)
    if kind == "cnn":
        return build_cnn(input_shape=(32, 32, 3), conv_filters=(4, 8), kernel_size=3, pool_size=2, dense_units=8)
    if kind == "fast":  # the shipped detector's layout: space-to-depth, flips and 1-pixel shifts, a temperature
        model = build_fast(input_shape=(32, 32, 3), stage_filters=(4, 8), convs_per_stage=1, space_to_depth=2,
                           dropout=0.1, flip_tta=True, tta_max_shift=1, seed=0)  # fmt: skip
        return with_calibration(model, 0.5)
    outputs = {"softmax": 2, "three": 3}[kind]
    return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                             keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(outputs, activation="softmax")])  # fmt: skip


def run_onnx(path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(onnx_export.OUTPUTS, session.run(None, {"images": images.astype(np.float32)}), strict=True))


def assert_same_verdicts(keras_p: np.ndarray, onnx_p: np.ndarray, thresholds) -> None:
    assert np.max(np.abs(onnx_p - keras_p)) <= TOLERANCE
    for threshold in thresholds:
        np.testing.assert_array_equal(onnx_p >= threshold, keras_p >= threshold, err_msg=f"threshold {threshold}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple]:
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for kind in ("cnn", "fast", "softmax", "three"):
        model = build(kind)
        save_model(model, folder / f"{kind}.keras")
        metadata = onnx_export.export_onnx(folder / f"{kind}.keras", folder / f"{kind}.onnx")
        out[kind] = (folder / f"{kind}.keras", folder / f"{kind}.onnx", metadata)
    return out


@pytest.mark.parametrize("kind", ["cnn", "fast", "softmax", "three"])
def test_the_export_gives_what_keras_gives(exported, kind):
    keras_file, onnx_file, _ = exported[kind]
    model = keras.models.load_model(keras_file, compile=False)
    images = fixed_images()
    want = p_fake(predict_proba(model, images, batch_size=len(images)))  # how predict scores with Keras
    got = run_onnx(onnx_file, images)
    assert_same_verdicts(want, got["p_fake"].astype(np.float64), THRESHOLDS)
    np.testing.assert_allclose(got["probabilities"], np.asarray(model(images.astype(np.float32))), atol=TOLERANCE)
    features = ood.embed(model, images, batch_size=16)  # averaged over the test-time views
    np.testing.assert_allclose(got["features"], features, rtol=1e-4, atol=1e-5)
    if kind == "three":
        np.testing.assert_array_equal(
            np.argmax(got["probabilities"], 1), np.argmax(model(images.astype(np.float32)), 1)
        )


def test_an_efficientnet_exports_with_the_images_as_its_only_input(tmp_path):
    """EfficientNetV2B3 captures non-variable tensors (the head's activity-regularizer coefficient, the backbone's
    normalization constants) that tf2onnx would otherwise take for graph inputs; the export has `images` only."""
    keras.utils.set_random_seed(3)
    model = build_efficientnet(input_shape=(32, 32, 3), num_classes=2, weights=None, dense_units=8, kernel_l2=0.01,
                               activity_l1=0.01, bias_l1=0.01, dropout=0.1, seed=0, params_key="w")  # fmt: skip
    save_model(model, tmp_path / "efficientnet.keras")
    onnx_export.export_onnx(tmp_path / "efficientnet.keras", tmp_path / "efficientnet.onnx")
    assert [value.name for value in onnx.load(str(tmp_path / "efficientnet.onnx")).graph.input] == ["images"]
    images = fixed_images()
    want = p_fake(predict_proba(keras.models.load_model(tmp_path / "efficientnet.keras", compile=False), images,
                                batch_size=len(images)))  # fmt: skip
    assert_same_verdicts(want, run_onnx(tmp_path / "efficientnet.onnx", images)["p_fake"].astype(np.float64),
                         THRESHOLDS)  # fmt: skip


def test_the_export_takes_any_batch_size(exported):
    _, onnx_file, _ = exported["fast"]
    images = fixed_images()
    whole = run_onnx(onnx_file, images)["p_fake"]
    one_by_one = np.concatenate([run_onnx(onnx_file, images[i : i + 1])["p_fake"] for i in range(5)])
    np.testing.assert_allclose(one_by_one, whole[:5], atol=1e-6)


def test_metadata_records_the_source_and_what_the_graph_takes(exported):
    keras_file, onnx_file, metadata = exported["fast"]
    stored = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert stored == metadata
    assert stored[onnx_export.SOURCE_SHA256] == hashlib.sha256(keras_file.read_bytes()).hexdigest()
    assert json.loads(stored[onnx_export.CLASS_NAMES]) == ["real", "fake"]
    assert json.loads(stored[onnx_export.INPUT_SIZE]) == [32, 32]
    assert json.loads({p.key: p.value for p in onnx.load(str(exported["three"][1])).metadata_props}[
        onnx_export.CLASS_NAMES]) == ["real", "sd_fake", "dcgan_fake"]  # fmt: skip
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(onnx_export.OUTPUTS)
    assert [i.name for i in session.get_inputs()] == ["images"]


def test_check_parity_and_the_serving_side_agree_on_currency(exported, tmp_path):
    keras_file, onnx_file, _ = exported["cnn"]
    diffs = onnx_export.check_parity(keras_file, onnx_file, fixed_images())
    assert diffs["p_fake"] <= TOLERANCE and diffs["features_width"] == 8
    copy = tmp_path / "cnn.keras"
    copy.write_bytes(keras_file.read_bytes())
    (tmp_path / "cnn.onnx").write_bytes(onnx_file.read_bytes())
    assert serving_models.current_export(copy) == tmp_path / "cnn.onnx"
    save_model(build("cnn"), copy)  # retrained (here: re-saved): other bytes, the export is stale
    if hashlib.sha256(copy.read_bytes()).hexdigest() != hashlib.sha256(keras_file.read_bytes()).hexdigest():
        assert serving_models.current_export(copy) is None


def test_onnx_export_imports_no_glue():
    source = REPO / "src" / "realfake" / "models" / "onnx_export.py"
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    assert not {n for n in names if n.startswith(("realfake.pipeline", "realfake.serving"))}


# ---- the shipped detector -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", serving_models.shipped_names())
def test_every_shipped_export_is_current_small_and_matches_its_keras_model(name):
    detector = serving_models.shipped_detector(name)
    keras_file, onnx_file = detector.file("keras"), detector.file("onnx")
    assert onnx_file.stat().st_size <= 2 * 1024 * 1024 and keras_file.stat().st_size <= 2 * 1024 * 1024
    stored = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert stored[onnx_export.SOURCE_SHA256] == hashlib.sha256(keras_file.read_bytes()).hexdigest(), (
        f"{onnx_file} was exported from another {keras_file.name}: re-export it (models.onnx_export.export_onnx)"
    )
    model = keras.models.load_model(keras_file, compile=False)
    rng = np.random.default_rng(11)
    jpegs = []
    for _ in range(16):  # CIFAKE-like: 32x32 JPEGs at quality 75, decoded
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=75)
        jpegs.append(np.asarray(Image.open(buffer)))
    images = np.concatenate([fixed_images(), np.stack(jpegs)])
    want = p_fake(predict_proba(model, images, batch_size=len(images)))
    got = run_onnx(onnx_file, images)
    info = load_info(info_path(keras_file))
    points = [p["threshold"] for p in info.operating_points.values()] + [0.5]
    assert_same_verdicts(want, got["p_fake"].astype(np.float64), points)
    features = ood.embed(model, images, batch_size=len(images))
    want_ood = ood.scores(features, info.ood_means, info.ood_precision)
    got_ood = ood.scores(got["features"].astype(np.float64), info.ood_means, info.ood_precision)
    np.testing.assert_allclose(got_ood, want_ood, rtol=1e-4)
    np.testing.assert_array_equal(got_ood > info.ood_cutoff, want_ood > info.ood_cutoff)


def test_the_export_stage_writes_a_checked_onnx_beside_the_model(tmp_path, mlflow_uri):
    import argparse
    import importlib.util

    from realfake.paths import ProjectPaths

    spec = importlib.util.spec_from_file_location("export_stage", REPO / "stages" / "export.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    (tmp_path / "models").mkdir()
    shipped = serving_models.shipped_detector()  # the default shipped detector, as the pipeline's model `fast`
    for kind, name in (("keras", "fast.keras"), ("detector", "fast.detector.npz")):
        (tmp_path / "models" / name).write_bytes(shipped.file(kind).read_bytes())
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    stage.main(ProjectPaths(tmp_path), argparse.Namespace(model="fast", params=tmp_path / "params.yaml"))
    from mlflow.tracking import MlflowClient

    (version,) = MlflowClient(mlflow_uri).search_model_versions("name = 'realfake-fast-onnx'")  # onnx flavour
    source_sha256 = hashlib.sha256(shipped.file("keras").read_bytes()).hexdigest()
    assert version.tags["source_sha256"] == source_sha256
    written = tmp_path / "models" / "fast.onnx"
    stored = {p.key: p.value for p in onnx.load(str(written)).metadata_props}
    assert stored[onnx_export.SOURCE_SHA256] == source_sha256
    assert serving_models.current_export(tmp_path / "models" / "fast.keras") == written
