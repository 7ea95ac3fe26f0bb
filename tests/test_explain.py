"""Grad-CAM (realfake.evaluation.explain), the `explain` stage and `realfake explain`."""

import json
import sys

import numpy as np
import pytest
from PIL import Image
from stage_helpers import REPO, checker_model, tiny_params, write_params, write_prepared

from realfake.evaluation import explain
from realfake.models.cnn import build_cnn
from realfake.models.fast import build_fast
from realfake.models.transfer import build_efficientnet, build_resnet50
from realfake.paths import ProjectPaths
from realfake.serving import cli

sys.path.insert(0, str(REPO / "stages"))
import explain as explain_stage  # noqa: E402


def half_checker_image(side: str) -> np.ndarray:
    """A flat grey image with the fake cue (a 1-pixel checker) only in its left or right half."""
    image = np.full((32, 32, 3), 120.0)
    checker = 20 * ((np.indices((32, 32)).sum(0) % 2) - 0.5)
    half = slice(0, 16) if side == "left" else slice(16, 32)
    image[:, half] += checker[:, half, None]
    return image.astype(np.uint8)


def test_heatmap_points_at_the_cue():
    images = np.stack([half_checker_image("left"), half_checker_image("right")])
    result = explain.gradcam(checker_model(), images, min_size=4, threshold=0.5)
    assert result.class_index.tolist() == [1, 1]  # both called fake
    left, right = result.heatmaps[:, :, :15].mean(axis=(1, 2)), result.heatmaps[:, :, 17:].mean(axis=(1, 2))
    assert left[0] > 5 * right[0] and right[1] > 5 * left[1]


def small_cnn():
    return build_cnn(input_shape=(32, 32, 3), conv_filters=(4, 8), kernel_size=3, pool_size=2, dense_units=8)


def test_heatmap_has_the_input_size_is_finite_and_depends_on_the_class():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    model = small_cnn()
    as_real = explain.gradcam(model, images, min_size=4, threshold=0.5, class_index=np.zeros(3, dtype=np.int64))
    as_fake = explain.gradcam(model, images, min_size=4, threshold=0.5, class_index=np.ones(3, dtype=np.int64))
    for result in (as_real, as_fake):
        assert result.heatmaps.shape == (3, 32, 32) and np.isfinite(result.heatmaps).all()
        assert result.heatmaps.min() >= 0 and result.heatmaps.max() <= 1
    assert not np.allclose(as_real.heatmaps, as_fake.heatmaps)
    np.testing.assert_allclose(as_real.probabilities, model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [build_efficientnet, build_resnet50])
def test_transfer_models_are_explained_inside_their_backbone(build):
    extra = {"kernel_l2": 0.01, "activity_l1": 0.01, "bias_l1": 0.01} if build is build_efficientnet else {}
    model = build(input_shape=(32, 32, 3), num_classes=2, weights=None, dense_units=8, dropout=0.1, seed=0,
                  params_key="models.x.weights", **extra)  # fmt: skip
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    result = explain.gradcam(model, images, min_size=4, threshold=0.5)
    assert "/" in result.layer  # a feature map of the nested backbone, not its 1x1 output
    assert result.heatmaps.shape == (2, 32, 32) and np.isfinite(result.heatmaps).all()
    np.testing.assert_allclose(result.probabilities, model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)


def test_fast_model_is_explained_on_one_pass_and_reports_its_tta_output():
    model = build_fast(input_shape=(32, 32, 3), stage_filters=(4, 8, 16), convs_per_stage=1, space_to_depth=1,
                       dropout=0.0, flip_tta=True, tta_max_shift=0, seed=0)  # fmt: skip
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    result = explain.gradcam(model, images, min_size=8, threshold=0.5)
    assert result.layer == "relu3_1"  # the last 8x8 map; the flip TTA layers are not part of the explained pass
    assert result.heatmaps.shape == (3, 32, 32) and np.isfinite(result.heatmaps).all()
    # what is reported is the saved model's own output, flip TTA included
    np.testing.assert_allclose(result.probabilities, model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_model_without_a_wide_enough_feature_map_is_named():
    with pytest.raises(ValueError, match="no feature map at least 64 pixels wide"):
        explain.gradcam(small_cnn(), np.zeros((1, 32, 32, 3), np.uint8), min_size=64, threshold=0.5)


def test_select_examples_takes_right_and_wrong_calls_of_each_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0])
    cells = explain.select_examples(labels, predicted, per_cell=2, seed=0)
    assert {k: len(v) for k, v in cells.items()} == {(0, True): 2, (0, False): 1, (1, True): 2, (1, False): 2}
    assert all(((predicted[idx] == labels[idx]) == correct).all() for (_, correct), idx in cells.items())
    assert all((labels[idx] == label).all() for (label, _), idx in cells.items())


@pytest.fixture
def project(tmp_path, mlflow_uri):
    write_prepared(tmp_path, sizes=(("test", 40),))
    args = write_params(tmp_path, tiny_params(explain={"candidates": 30, "per_cell": 3}))
    args.model = "cnn"
    (tmp_path / "models").mkdir()
    checker_model().save(tmp_path / "models" / "cnn.keras")
    return ProjectPaths(tmp_path), args


def test_stage_writes_the_grid_and_what_it_shows(project):
    paths, args = project
    explain_stage.main(paths, args)
    grid = Image.open(paths.plots / "explain" / "cnn.png")
    assert grid.format == "PNG" and grid.width > 300
    summary = json.loads((paths.reports / "explain" / "cnn.json").read_text())
    assert summary["layer"] == "conv2d" or summary["layer"].startswith("conv2d")
    assert list(summary["rows"]) == ["real, called real", "real, called fake", "fake, called fake", "fake, called real"]
    assert 1 <= len(summary["rows"]["real, called real"]) <= 3 and summary["candidates_accuracy"] > 0.9


def test_cli_writes_an_overlay(project, tmp_path, capsys):
    paths, _ = project
    image = tmp_path / "photo.png"
    Image.fromarray(half_checker_image("left")).save(image)
    output = tmp_path / "out.png"
    code = cli.main(["explain", str(image), "--model", str(paths.model_file("cnn")), "--output", str(output),
                     "--repo", str(paths.root)])  # fmt: skip
    assert code == 0
    assert Image.open(output).width > 600  # three panels: the image, the overlay, the heatmap with its colour bar
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == str(output) and line[1] == "fake" and line[2].startswith("P(fake) ")


def test_cli_explains_several_images_and_skips_an_unreadable_one(project, tmp_path, capsys, monkeypatch):
    paths, _ = project
    monkeypatch.chdir(tmp_path)
    for side in ("left", "right"):
        Image.fromarray(half_checker_image(side)).save(tmp_path / f"{side}.png")
    (tmp_path / "broken.jpg").write_text("not an image")
    code = cli.main(["explain", "left.png", "broken.jpg", "right.png", "--model", str(paths.model_file("cnn")),
                     "--repo", str(paths.root)])  # fmt: skip
    assert code == 1  # as predict: some files skipped
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == ["left.png.gradcam.png", "right.png.gradcam.png"]
    assert (tmp_path / "right.png.gradcam.png").is_file() and "broken.jpg: not an image format" in err
    assert cli.main(["explain", "left.png", "right.png", "--output", "x.png", "--model",
                     str(paths.model_file("cnn"))]) == 2  # fmt: skip
    assert "--output names one file" in capsys.readouterr().err


def test_cli_reports_an_unreadable_image(project, tmp_path, capsys):
    paths, _ = project
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    assert cli.main(["explain", str(broken), "--model", str(paths.model_file("cnn")), "--repo", str(paths.root)]) == 2
    assert "broken.jpg: not an image format" in capsys.readouterr().err
