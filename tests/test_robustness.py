"""Perturbations (realfake.robustness) and the `robustness` stage."""

import io
import json
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from stage_helpers import REPO, checker_model, tiny_params, write_params, write_prepared

from realfake import robustness
from realfake.errors import DataError, ParamsError
from realfake.fileio import load_arrays
from realfake.params import load_params
from realfake.paths import ProjectPaths
from realfake.robustness import Perturbation

sys.path.insert(0, str(REPO / "stages"))
import robustness as robustness_stage  # noqa: E402


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (12, 8, 8, 3)), np.ones((1, 4, 4, 1)))  # blocks: JPEG-friendly
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


ZERO = {
    "blur_0": Perturbation("blur", 0),
    "noise_0": Perturbation("noise", 0),
    "downscale_1": Perturbation("downscale", 1),
}


@pytest.mark.parametrize("zero", ZERO.values())
def test_strength_zero_leaves_images_unchanged(images, zero):
    out = robustness.perturb(images, zero, seed=0)
    assert out.dtype == np.uint8 and np.array_equal(out, images) and out is not images


@pytest.mark.parametrize(
    "perturbation",
    [Perturbation("jpeg", 90), Perturbation("downscale", 2), Perturbation("blur", 1), Perturbation("noise", 5)],
)
def test_every_perturbation_changes_pixels_and_keeps_shape(images, perturbation):
    out = robustness.perturb(images, perturbation, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - images).mean() > 0.5


def test_jpeg_reencoding_equals_pillows_own_round_trip_and_loses_more_at_lower_quality(images):
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="JPEG", quality=50)
    by_hand = np.asarray(Image.open(buffer).convert("RGB"))
    q50 = robustness.perturb(images, Perturbation("jpeg", 50), seed=0)
    assert np.array_equal(q50[0], by_hand)
    errors = [
        np.abs(robustness.perturb(images, Perturbation("jpeg", q), seed=0).astype(int) - images).mean()
        for q in (90, 70, 50, 30)
    ]
    assert errors == sorted(errors) and errors[0] > 0


def test_noise_is_seeded_and_has_the_requested_sigma():
    flat = np.full((200, 32, 32, 3), 128, dtype=np.uint8)
    a = robustness.perturb(flat, Perturbation("noise", 5), seed=1)
    assert np.array_equal(a, robustness.perturb(flat, Perturbation("noise", 5), seed=1))
    assert not np.array_equal(a, robustness.perturb(flat, Perturbation("noise", 5), seed=2))
    assert (a.astype(float) - 128).std() == pytest.approx(5, rel=0.02)


def test_bad_perturbations_and_inputs_are_refused(images):
    with pytest.raises(ValueError, match="JPEG quality must be a whole number in 1..95"):
        robustness.perturb(images, Perturbation("jpeg", 100), seed=0)
    with pytest.raises(ValueError, match="unknown perturbation kind 'rotate'"):
        robustness.perturb(images, Perturbation("rotate", 1), seed=0)
    with pytest.raises(ValueError, match="expected uint8 images"):
        robustness.perturb(images.astype(np.float32), Perturbation("blur", 1), seed=0)


def test_stratified_sample_is_balanced_and_seeded():
    labels = np.array([0] * 70 + [1] * 30)
    chosen = robustness.stratified_sample(labels, count=40, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [20, 20] and len(set(chosen)) == 40
    assert np.array_equal(chosen, robustness.stratified_sample(labels, count=40, seed=0))
    assert np.array_equal(robustness.stratified_sample(labels, count=None, seed=0), np.arange(100))


@pytest.mark.parametrize(
    ("perturbations", "message"),
    [
        ([{"kind": "sharpen", "strength": 1}], r"robustness.perturbations\[0\].kind: 'sharpen' is not allowed"),
        ([{"kind": "jpeg", "strength": 100}], r"robustness.perturbations\[0\]: jpeg_100: JPEG quality"),
        ([{"kind": "blur", "strength": 1}, {"kind": "blur", "strength": 1.0}], "lists a perturbation twice"),
        ([{"kind": "blur"}], r"missing key\(s\) robustness.perturbations\[0\].strength"),
    ],
)
def test_bad_params_are_named(tmp_path, perturbations, message):
    args = write_params(tmp_path, tiny_params(robustness={"perturbations": perturbations}))
    with pytest.raises(ParamsError, match=message):
        load_params(args.params, sections=["robustness"])


# ----------------------------------------------------------------------------- the stage


@pytest.fixture
def project(tmp_path, mlflow_uri):
    write_prepared(tmp_path, sizes=(("test", 40),))
    params = tiny_params(robustness={"max_images": 30})
    params["models"] = {name: params["models"][name] for name in ("cnn", "efficientnet_3class")}
    args = write_params(tmp_path, params)
    (tmp_path / "models").mkdir()
    checker_model().save(tmp_path / "models" / "cnn.keras")
    return ProjectPaths(tmp_path), args


def test_stage_writes_every_output_and_zero_strength_scores_like_none(project):
    paths, args = project
    params = load_params(args.params)
    test = robustness_stage.Split.from_arrays(load_arrays(paths.prepared_split("test")))
    zero = {name: robustness.perturb(test.images, p, seed=0) for name, p in ZERO.items()}
    model = keras.models.load_model(paths.model_file("cnn"), compile=False)
    scores = robustness_stage.score(model, test, {"none": test.images, **zero}, params.evaluate, seed=0)
    assert all(scores[name] == scores["none"] for name in ZERO)
    assert scores["none"]["accuracy"] > 0.9  # the checker cue is there ...

    robustness_stage.main(paths, args)
    metrics = json.loads((paths.metrics / "robustness.json").read_text())
    assert list(metrics["scores"]) == ["cnn"]  # every binary model: models.* minus train_3class.model
    assert metrics["perturbations"] == ["none", "jpeg_90", "jpeg_70", "jpeg_50", "jpeg_30", "downscale_2",
                                        "blur_1", "noise_5"]  # fmt: skip
    cnn = metrics["scores"]["cnn"]
    assert all(s["n"] == 30 for s in cnn.values()) and "30 images" in metrics["computed_on"]
    assert cnn["none"]["accuracy"] > 0.9 and cnn["blur_1"]["accuracy"] < 0.7  # ... and a blur washes it out
    assert (paths.plots / "robustness" / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (paths.reports / "robustness.md").read_text()
    assert "| cnn |" in report and "jpeg_30" in report


def test_stage_names_a_missing_model(project):
    paths, args = project
    paths.model_file("cnn").unlink()
    with pytest.raises(DataError, match=r"models/cnn.keras: model not found; train it with: dvc repro train@cnn"):
        robustness_stage.main(paths, args)
