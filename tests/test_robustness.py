"""Perturbations (realfake.data.perturb), robustness scoring (realfake.evaluation.robustness), the robustness part of
the `evaluate@<model>` stage and the `robustness_report` stage."""

import io
import json
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from stage_helpers import REPO, checker_model, tiny_params, write_params, write_prepared

from realfake.data import perturb as robustness
from realfake.data.perturb import Perturbation, Step
from realfake.data.prepare import stratified_sample
from realfake.errors import DataError, ParamsError
from realfake.evaluation import reports
from realfake.evaluation.robustness import CLEAN, accuracy_matrix, perturbed_sets, score_sets
from realfake.evaluation.scoring import score_binary
from realfake.fileio import load_arrays
from realfake.models.detector import DetectorInfo, info_path, save_info
from realfake.params import load_params
from realfake.paths import ProjectPaths

sys.path.insert(0, str(REPO / "stages"))
import evaluate as evaluate_stage  # noqa: E402
import robustness_report as report_stage  # noqa: E402


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (12, 8, 8, 3)), np.ones((1, 4, 4, 1)))  # blocks: JPEG-friendly
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


ZERO = {"blur_0": "blur 0", "noise_0": "noise 0", "downscale_1": "downscale 1"}


@pytest.mark.parametrize("zero", ZERO.values())
def test_strength_zero_leaves_images_unchanged(images, zero):
    out = robustness.perturb(images, Perturbation.parse(zero), seed=0)
    assert out.dtype == np.uint8 and np.array_equal(out, images) and out is not images


@pytest.mark.parametrize("text", ["jpeg 90", "downscale 2", "blur 1", "noise 5", "downscale 2 + jpeg 75"])
def test_every_perturbation_changes_pixels_and_keeps_shape(images, text):
    out = robustness.perturb(images, Perturbation.parse(text), seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - images).mean() > 0.5


def test_parse_names_and_text():
    chain = Perturbation.parse("  downscale 2 +jpeg   75 ")
    assert chain.steps == (Step("downscale", 2.0), Step("jpeg", 75.0))
    assert chain.name == "downscale_2+jpeg_75" and chain.text == "downscale 2 + jpeg 75"
    assert Perturbation.parse("blur 0.5").name == "blur_0.5"


def test_a_chain_applies_its_steps_in_order(images):
    chained = robustness.perturb(images, Perturbation.parse("downscale 2 + jpeg 75"), seed=0)
    by_steps = robustness.perturb(
        robustness.perturb(images, Perturbation.parse("downscale 2"), seed=0), Perturbation.parse("jpeg 75"), seed=0
    )
    np.testing.assert_array_equal(chained, by_steps)
    reversed_order = robustness.perturb(images, Perturbation.parse("jpeg 75 + downscale 2"), seed=0)
    assert not np.array_equal(chained, reversed_order)  # the order matters, so the test above can tell


def test_jpeg_reencoding_equals_pillows_own_round_trip_and_loses_more_at_lower_quality(images):
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="JPEG", quality=50)
    by_hand = np.asarray(Image.open(buffer).convert("RGB"))
    q50 = robustness.perturb(images, Perturbation.parse("jpeg 50"), seed=0)
    assert np.array_equal(q50[0], by_hand)
    errors = [
        np.abs(robustness.perturb(images, Perturbation.parse(f"jpeg {q}"), seed=0).astype(int) - images).mean()
        for q in (90, 70, 50, 30)
    ]
    assert errors == sorted(errors) and errors[0] > 0


def test_noise_is_seeded_and_has_the_requested_sigma():
    flat = np.full((200, 32, 32, 3), 128, dtype=np.uint8)
    noise = Perturbation.parse("noise 5")
    a = robustness.perturb(flat, noise, seed=1)
    assert np.array_equal(a, robustness.perturb(flat, noise, seed=1))
    assert not np.array_equal(a, robustness.perturb(flat, noise, seed=2))
    assert (a.astype(float) - 128).std() == pytest.approx(5, rel=0.02)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jpeg 100", "JPEG quality must be a whole number in 1..95"),
        ("jpeg 50.5", "JPEG quality must be a whole number in 1..95"),
        ("rotate 1", "unknown kind 'rotate'"),
        ("downscale 0.5", "the factor must be >= 1"),
        ("blur -1", "sigma must be >= 0"),
        ("blur", "write each step as 'kind strength'"),
        ("blur 1 +", "write each step as 'kind strength'"),
        ("noise five", "'five' is not a number"),
    ],
)
def test_bad_perturbations_are_refused_when_parsed(text, message):
    with pytest.raises(ValueError, match=message):
        Perturbation.parse(text)


def test_bad_inputs_are_refused(images):
    with pytest.raises(ValueError, match="unknown degradation kind 'rotate'"):
        robustness.perturb(images, Perturbation((Step("rotate", 1),)), seed=0)
    with pytest.raises(ValueError, match="expected uint8 images"):
        robustness.perturb(images.astype(np.float32), Perturbation.parse("blur 1"), seed=0)


def test_stratified_sample_is_balanced_and_seeded():
    labels = np.array([0] * 70 + [1] * 30)
    chosen = stratified_sample(labels, count=40, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [20, 20] and len(set(chosen)) == 40
    assert np.array_equal(chosen, stratified_sample(labels, count=40, seed=0))
    assert np.array_equal(stratified_sample(labels, count=None, seed=0), np.arange(100))


@pytest.mark.parametrize(
    ("perturbations", "message"),
    [
        (["sharpen 1"], r"robustness.perturbations\[0\]: .*unknown kind 'sharpen'"),
        (["blur 1", "jpeg 100"], r"robustness.perturbations\[1\]: jpeg 100: JPEG quality"),
        (["blur 1", "blur 1.0"], "lists a perturbation twice"),
        (["blur"], r"robustness.perturbations\[0\]: 'blur': write each step as 'kind strength'"),
        ([], "robustness.perturbations: list at least 1 entry, got \\[\\]"),
    ],
)
def test_bad_params_are_named(tmp_path, perturbations, message):
    args = write_params(tmp_path, tiny_params(robustness={"perturbations": perturbations}))
    with pytest.raises(ParamsError, match=message):
        load_params(args.params, sections=["robustness"])


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def split():
    """40 synthetic test images, half real, half fake (the fake ones carry the checker cue)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        write_prepared(Path(tmp), sizes=(("test", 40),))
        arrays = load_arrays(Path(tmp) / "data" / "prepared" / "test.npz")
    return arrays["images"], arrays["labels"].astype(np.int64)


SCORING = dict(class_names=("real", "fake"), batch_size=16, threshold=0.5, n_bootstrap=50, confidence=0.95, seed=0)


def test_zero_strength_scores_like_the_clean_images(split):
    images, labels = split
    sets = perturbed_sets(images, [Perturbation.parse(text) for text in ZERO.values()], seed=0)
    assert list(sets) == [CLEAN, *ZERO]
    result = score_sets(checker_model(), sets, labels, **SCORING)
    assert all(result["scores"][name] == result["scores"][CLEAN] for name in ZERO)
    assert result["clean_accuracy"] == result["robust_accuracy"] == result["worst_accuracy"] > 0.9


def test_robust_accuracy_is_the_mean_over_the_perturbed_sets(split):
    images, labels = split
    model = checker_model()
    perturbations = [Perturbation.parse(text) for text in ("blur 1", "jpeg 90", "downscale 2 + jpeg 75")]
    sets = perturbed_sets(images, perturbations, seed=0)
    result = score_sets(model, sets, labels, **SCORING)
    assert list(result["scores"]) == ["none", "blur_1", "jpeg_90", "downscale_2+jpeg_75"]
    accuracies = {}
    for name, pixels in sets.items():
        _, report = score_binary(model, pixels, labels, **SCORING)
        accuracies[name] = report["accuracy"]
        assert result["scores"][name] == {k: report[k] for k in ("n", "accuracy", "accuracy_ci", "roc_auc",
                                                                "roc_auc_ci")}  # fmt: skip
    perturbed = [accuracies[name] for name in ("blur_1", "jpeg_90", "downscale_2+jpeg_75")]
    assert result["clean_accuracy"] == accuracies["none"] > 0.9
    assert result["robust_accuracy"] == pytest.approx(np.mean(perturbed))
    assert result["robust_accuracy"] != pytest.approx(np.mean(list(accuracies.values())))  # the clean set is left out
    assert result["worst_accuracy"] == min(perturbed) == accuracies["blur_1"] < 0.7  # a blur washes the cue out
    assert score_sets(model, {CLEAN: images}, labels, **SCORING)["robust_accuracy"] is None


def robustness_result(accuracies: dict[str, float], robust: float) -> dict:
    scores = {
        name: {"n": 10, "accuracy": a, "accuracy_ci": [a - 0.1, a + 0.1], "roc_auc": None, "roc_auc_ci": None}
        for name, a in accuracies.items()
    }
    return {"clean_accuracy": accuracies[CLEAN], "robust_accuracy": robust, "worst_accuracy": None, "scores": scores}


def test_accuracy_matrix_adds_the_robust_column():
    by_model = {
        "cnn": robustness_result({"none": 0.9, "jpeg_50": 0.7, "blur_1": 0.5}, robust=0.6),
        "fast": robustness_result({"none": 0.95, "blur_1": 0.85, "noise_5": 0.8}, robust=0.825),
    }
    matrix, models, columns = accuracy_matrix(by_model)
    assert models == ["cnn", "fast"]
    assert columns == ["none", "jpeg_50", "blur_1", "noise_5", "robust (mean)"]
    np.testing.assert_allclose(matrix, [[0.9, 0.7, 0.5, np.nan, 0.6], [0.95, np.nan, 0.85, 0.8, 0.825]])
    table = reports.robustness_table(by_model)
    assert "| model | none | jpeg_50 | blur_1 | noise_5 | robust accuracy (mean over perturbations) |" in table
    assert "| cnn | acc 0.900 [0.800, 1.000]<br>AUC n/a |" in table and table.count("n/a") >= 2
    assert "**0.825** |" in table


# ----------------------------------------------------------------------------- the stages


@pytest.fixture
def project(tmp_path, mlflow_uri):
    """A project with a 40-image test split, the checker model as models/cnn.keras with detector extras, and params
    naming cnn and fast (binary) and efficientnet_3class."""
    write_prepared(tmp_path, sizes=(("test", 40),))
    params = tiny_params(robustness={"max_images": 30})
    params["models"] = {name: params["models"][name] for name in ("cnn", "fast", "efficientnet_3class")}
    args = write_params(tmp_path, params)
    args.model = "cnn"
    paths = ProjectPaths(tmp_path)
    paths.models.mkdir()
    checker_model().save(paths.model_file("cnn"))
    info = DetectorInfo(
        temperature=1.0, operating_points={"fpr_0.05": {"max_fpr": 0.05, "threshold": 0.5, "fpr": 0.0, "recall": 1.0}},
        ood_means=np.zeros((2, 2), np.float32), ood_precision=np.eye(2, dtype=np.float32), ood_cutoff=1.0,
        ood_percentile=99.0, fitted_on={},
    )  # fmt: skip
    save_info(info_path(paths.model_file("cnn")), info)
    return paths, args


def test_evaluate_stage_writes_the_models_robustness(project, mlflow_uri):
    paths, args = project
    evaluate_stage.main(paths, args)
    result = json.loads((paths.metrics / "robustness" / "cnn.json").read_text())
    names = ["none", "jpeg_50", "downscale_2", "blur_1", "noise_5", "downscale_2+jpeg_75"]  # tiny_params' list
    assert result["model"] == "cnn" and list(result["scores"]) == names
    assert all(s["n"] == 30 for s in result["scores"].values()) and "30 images" in result["computed_on"]
    assert result["scores"]["none"]["accuracy"] > 0.9 and result["scores"]["blur_1"]["accuracy"] < 0.7
    perturbed = [result["scores"][name]["accuracy"] for name in names[1:]]
    assert result["robust_accuracy"] == pytest.approx(np.mean(perturbed))
    assert result["worst_accuracy"] == min(perturbed)
    assert (result["threshold"], result["confidence"]) == (0.5, 0.95)

    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("realfake").experiment_id], "tags.stage = 'evaluate'")
    metrics = run.data.metrics
    assert metrics["robustness.robust_accuracy"] == pytest.approx(result["robust_accuracy"])
    assert metrics["robustness.downscale_2_jpeg_75.accuracy"] == result["scores"]["downscale_2+jpeg_75"]["accuracy"]


def test_robustness_report_draws_every_binary_model(project):
    paths, args = project
    folder = paths.metrics / "robustness"
    folder.mkdir(parents=True)
    common = {"computed_on": "30 images of the CIFAKE test split", "threshold": 0.5, "confidence": 0.95}
    cnn = robustness_result({"none": 0.9, "jpeg_50": 0.7, "downscale_2+jpeg_75": 0.5}, robust=0.6)
    fast = robustness_result({"none": 0.95, "jpeg_50": 0.85}, robust=0.85)
    (folder / "cnn.json").write_text(json.dumps({"model": "cnn", **common, **cnn}))
    (folder / "fast.json").write_text(json.dumps({"model": "fast", **common, **fast}))
    report_stage.main(paths, args)
    with Image.open(paths.plots / "robustness" / "heatmap.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    text = (paths.reports / "robustness.md").read_text()
    assert "Computed on 30 images of the CIFAKE test split" in text
    assert "| model | none | jpeg_50 | downscale_2+jpeg_75 | robust accuracy (mean over perturbations) |" in text
    assert "| cnn |" in text and "| fast |" in text and "efficientnet_3class" not in text  # binary models only
    assert "**0.600**" in text and "**0.850**" in text


def test_robustness_report_names_a_missing_model_report(project):
    paths, args = project
    with pytest.raises(DataError, match=r"metrics/robustness/cnn.json: not found"):
        report_stage.main(paths, args)
