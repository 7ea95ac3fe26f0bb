"""`realfake predict`: image discovery and decoding, model choice, outputs, exit codes, the console script."""

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from importlib.metadata import version
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image, ImageOps

from realfake.models.detector import DetectorInfo, info_path, save_info
from realfake.models.onnx_export import export_onnx
from realfake.serving import models as serving_models
from realfake.serving import predict
from realfake.serving.cli import main

SIZE = (32, 32)
GREEN = (30, 200, 60)
INK = (10, 20, 30)


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch):
    """The command sets Pillow's process-wide bomb limit; put it back for the tests that follow."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


# ---- fixtures: tiny saved models and a folder of good and bad images ------------------------------


def tiny_model(outputs: int, activation: str, seed: int) -> keras.Model:
    """Pixels 0..255 in, rescaled inside (as every pipeline model does), `outputs` probabilities out."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(
                outputs, activation=activation, kernel_initializer=keras.initializers.RandomNormal(0, 0.05)
            ),
        ]
    )


def colour_model() -> keras.Model:
    """P(fake) = sigmoid(2 * (r + g + b) / 255 - 4) of the mean colour, which is also its feature vector (/255):
    GREEN images get 0.150, WHITE ones 0.881."""
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="colour",
    )
    model.layers[-1].set_weights([np.full((3, 1), 2.0, np.float32), np.array([-4.0], np.float32)])
    return model


def p_colour(rgb) -> float:
    return float(1 / (1 + np.exp(-(2 * sum(rgb) / 255 - 4))))


WHITE = (255, 255, 255)
# Detector extras of the colour model: its OOD statistics are one class mean at GREEN with a precision of 100 per
# channel, so a GREEN image lies at distance 0 and a WHITE one at 100 * |WHITE - GREEN|^2 / 255^2 = 141, over the
# cutoff of 1. Its operating points: at most 1% of real validation images flagged at P(fake) >= 0.9, 5% at 0.5.
POINTS = {
    "fpr_0.01": {"max_fpr": 0.01, "threshold": 0.9, "fpr": 0.008, "recall": 0.25},
    "fpr_0.05": {"max_fpr": 0.05, "threshold": 0.5, "fpr": 0.04, "recall": 0.75},
}
WHITE_DISTANCE = 100 * sum((w - g) ** 2 for w, g in zip(WHITE, GREEN, strict=True)) / 255**2


def colour_detector() -> DetectorInfo:
    return DetectorInfo(
        temperature=1.0, operating_points=POINTS, ood_means=np.array([GREEN], np.float32) / 255,
        ood_precision=np.eye(3, dtype=np.float32) * 100, ood_cutoff=1.0, ood_percentile=99.0, fitted_on={},
    )  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    files = {}
    for name, outputs, activation in [("sigmoid", 1, "sigmoid"), ("softmax", 2, "softmax"), ("three", 3, "softmax")]:
        files[name] = folder / f"{name}.keras"
        tiny_model(outputs, activation, seed=outputs).save(files[name])
    files["colour"] = folder / "colour.keras"
    colour_model().save(files["colour"])
    save_info(info_path(files["colour"]), colour_detector())
    for name in ("sigmoid", "softmax", "three", "colour"):  # their ONNX exports (colour.onnx finds its extras too)
        files[f"{name}_onnx"] = folder / f"{name}.onnx"
        export_onnx(files[name], files[f"{name}_onnx"])
    return files


def png_with_huge_header(path: Path, width: int, height: int) -> None:
    """A valid 8x8 PNG whose IHDR then claims width x height (CRC fixed): Pillow sees the size when opening."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), GREEN).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"  # 8-byte signature, 4-byte length, then the chunk type
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over type + 13 data bytes
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    good, bad = root / "good", root / "bad"
    (good / "nested" / "deeper").mkdir(parents=True)
    bad.mkdir()
    rng = np.random.default_rng(0)
    files = {name: good / name for name in ("cifake.jpg", "wide.png", "gray.png", "rgba.png")}
    files["nested"] = good / "nested" / "deeper" / "photo.WEBP"
    # A CIFAKE-like image: 32x32 RGB JPEG, quality 75, 4:2:0 (Pillow's defaults).
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(files["cifake.jpg"], quality=75)
    # 128x64 with red and blue side bands: the centred 64x64 crop (plus LANCZOS' reach) is all green.
    wide = np.zeros((64, 128, 3), dtype=np.uint8)
    wide[:] = GREEN
    wide[:, :16] = (255, 0, 0)
    wide[:, 112:] = (0, 0, 255)
    Image.fromarray(wide).save(files["wide.png"])
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(files["gray.png"])
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, 16:] = (*INK, 255)  # left half fully transparent (hidden colour black), right half opaque
    Image.fromarray(rgba).save(files["rgba.png"])
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(files["nested"], lossless=True)
    (good / "notes.txt").write_text("not an image, and not named like one: a folder search ignores it")
    # Bad files.
    files["truncated"] = bad / "truncated.jpg"
    files["truncated"].write_bytes(files["cifake.jpg"].read_bytes()[:400])
    files["text"] = bad / "text.jpg"
    files["text"].write_text("this is a text file with a .jpg name\n")
    files["bomb"] = bad / "bomb.png"
    png_with_huge_header(files["bomb"], 100_000, 100_000)
    files["good"], files["bad"] = good, bad
    colours = root / "colours"
    colours.mkdir()
    for name, colour, side in [("green", GREEN, 32), ("white", WHITE, 32), ("green64", GREEN, 64)]:
        files[name] = colours / f"{name}.png"
        Image.new("RGB", (side, side), colour).save(files[name])
    return files


GOOD = ("cifake.jpg", "wide.png", "gray.png", "rgba.png", "nested")
BAD = ("truncated", "text", "bomb")


def load(path: Path, max_pixels: int = predict.MAX_PIXELS) -> np.ndarray:
    pixels, _ = predict.load_image(path, size=SIZE, max_pixels=max_pixels)
    return pixels


def expected_p_fake(model_file: Path, paths) -> np.ndarray:
    """P(fake) from the model's own predict() on the pixels load_image gives."""
    model = keras.models.load_model(model_file, compile=False)
    out = model.predict(np.stack([load(p) for p in paths]).astype(np.float32), verbose=0)
    return out[:, 0] if out.shape[1] == 1 else 1.0 - out[:, 0]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ---- decoding --------------------------------------------------------------------------------------


def test_32x32_jpeg_gives_exactly_the_decoded_pixels(images):
    with Image.open(images["cifake.jpg"]) as im:
        decoded = np.asarray(im)  # what prepare/cifake.py stores for a CIFAKE JPEG
    pixels, resampled = predict.load_image(images["cifake.jpg"], size=SIZE, max_pixels=predict.MAX_PIXELS)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3) and resampled is False
    np.testing.assert_array_equal(pixels, decoded)


@pytest.mark.parametrize(("name", "resampled"), [("cifake.jpg", False), ("gray.png", False), ("rgba.png", False),
                                                 ("wide.png", True), ("nested", True)])  # fmt: skip
def test_load_image_says_whether_it_resampled(images, name, resampled):
    assert predict.load_image(images[name], size=SIZE, max_pixels=predict.MAX_PIXELS)[1] is resampled


def test_larger_image_is_centre_cropped_then_resized(images):
    pixels = load(images["wide.png"]).astype(int)
    # Squashing the whole 128x64 image would put red and blue in the outer columns.
    assert np.abs(pixels - GREEN).max() <= 1


def test_grayscale_rgba_and_16_bit_become_rgb(images, tmp_path):
    gray = load(images["gray.png"])
    with Image.open(images["gray.png"]) as im:
        np.testing.assert_array_equal(gray, np.repeat(np.asarray(im)[..., None], 3, axis=2))
    rgba = load(images["rgba.png"])
    assert (rgba[:, :16] == 255).all()  # transparent: composited on white, not the hidden black
    assert (rgba[:, 16:] == INK).all()
    deep = np.full((32, 32), 0x8000 + 0x7F, dtype=np.uint16)  # 16-bit gray: keep the high byte
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert (load(tmp_path / "deep.png") == 0x80).all()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("truncated", "damaged"), ("text", "not an image format"), ("bomb", "too large")],
)
def test_unreadable_files_raise_with_a_reason(images, name, reason):
    with pytest.raises(predict.UnreadableImageError, match=reason):
        load(images[name])


def test_own_pixel_limit_applies_whatever_pillows_setting(images):
    with pytest.raises(predict.UnreadableImageError, match="over the limit of 1,000"):
        load(images["wide.png"], max_pixels=1000)


def test_find_images_recurses_by_extension_and_reports_missing(images, tmp_path):
    found, problems = predict.find_images([images["good"], images["cifake.jpg"], tmp_path / "missing", tmp_path])
    assert sorted(found) == sorted(images[n] for n in GOOD)  # notes.txt ignored, cifake.jpg listed once
    assert [(p.name, r.split(" (")[0]) for p, r in problems] == [
        ("missing", "no such file or folder"),
        (tmp_path.name, "no image files"),
    ]


def test_find_images_skips_pipes_and_broken_links_without_opening_them(images, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "real.png").write_bytes(images["green"].read_bytes())
    os.mkfifo(folder / "x.jpg")  # opening it for reading would block until a writer comes
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "named.png")
    found, problems = predict.find_images([folder, tmp_path / "named.png", Path("/dev/null")])
    assert found == [folder / "real.png"]
    assert [(p.name, reason.split(";")[0]) for p, reason in problems] == [
        ("gone.png", "not a regular file (a pipe, device or broken link)"),
        ("x.jpg", "not a regular file (a pipe, device or broken link)"),
        ("named.png", "not a regular file (a pipe, device or socket)"),
        ("null", "not a regular file (a pipe, device or socket)"),
    ]
    with pytest.raises(predict.UnreadableImageError, match="not a regular file"):
        predict.load_image(folder / "x.jpg", size=SIZE, max_pixels=predict.MAX_PIXELS)


def test_display_path_writes_undecodable_bytes_as_escapes():
    name = Path(os.fsdecode(b"/photos/bad\xff\xfe.jpg"))
    assert predict.display_path(name) == "/photos/bad\\xff\\xfe.jpg"
    assert predict.display_path(Path("/photos/caf\u00e9.jpg")) == "/photos/caf\u00e9.jpg"  # valid UTF-8 kept as is


# ---- the command -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _outside_any_repo(tmp_path, monkeypatch):
    """Each test starts in an empty folder: the workspace's own params.yaml, models and mlflow.db play no part."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def stderr_lines(err: str, marker: str = "realfake: ") -> list[str]:
    return [line for line in err.splitlines() if line.startswith(marker)]


def test_predict_classifies_good_files_reports_bad_ones_and_exits_1(models, images, capsys):
    code, out, err = run_cli(capsys, images["good"], images["bad"], "--model", models["sigmoid"], "--format", "json",
                             "--threshold", "0.5")  # fmt: skip
    assert code == 1
    rows = json.loads(out)
    paths = [images[n] for n in GOOD]
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))
    by_path = {r["path"]: r for r in rows}
    got = np.array([by_path[str(p)]["p_fake"] for p in paths])
    np.testing.assert_allclose(got, expected_p_fake(models["sigmoid"], paths), rtol=1e-5, atol=1e-6)
    assert all(r["label"] == ("fake" if r["p_fake"] >= 0.5 else "real") and r["model"] == "sigmoid" for r in rows)
    # The 32x32 JPEG is scored on its decoded pixels, untouched.
    with Image.open(images["cifake.jpg"]) as im:
        direct = expected_p_fake(models["sigmoid"], [images["cifake.jpg"]])
        assert np.asarray(im).shape == (32, 32, 3)
    assert by_path[str(images["cifake.jpg"])]["p_fake"] == pytest.approx(float(direct[0]), abs=1e-6)
    skipped = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("/")}
    assert set(skipped) == {str(images[n]) for n in BAD}
    assert "damaged" in skipped[str(images["truncated"])]
    assert "not an image format" in skipped[str(images["text"])]
    assert "decompression bomb" in skipped[str(images["bomb"])]


def test_resampled_images_are_flagged_in_every_format_with_one_warning(models, images, capsys):
    resampled = {str(images[n]): n in ("wide.png", "nested") for n in GOOD}
    code, out, err = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert {r["path"]: r["resampled"] for r in rows} == resampled
    assert all(r["ood"] is None and r["ood_score"] is None for r in rows)  # no detector file: no OOD verdict
    (warning,) = stderr_lines(err)  # one line, whatever the number of images
    assert warning.startswith("realfake: warning: 2 image(s) were not 32x32 and were resized")
    assert "accuracy on resized images was not measured" in warning

    code, out, err = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "p_fake", "label", "model", "resampled", "ood", "ood_score"]
    assert {r["path"]: r["resampled"] for r in rows} == {p: str(flag) for p, flag in resampled.items()}
    assert {(r["ood"], r["ood_score"]) for r in rows} == {("", "")}
    assert len(stderr_lines(err)) == 1

    code, out, err = run_cli(capsys, images["good"], "--model", models["sigmoid"])
    header, *lines = out.splitlines()
    assert header.split() == ["path", "P(fake)", "label", "model", "resampled", "out", "of", "distribution"]
    assert {line.split()[0]: line.split()[4] for line in lines} == {
        p: "yes" if flag else "no" for p, flag in resampled.items()
    }
    assert len(stderr_lines(err)) == 1

    code, _, err = run_cli(capsys, images["cifake.jpg"], images["gray.png"], "--model", models["sigmoid"])
    assert code == 0 and stderr_lines(err) == []  # nothing resized: no warning


def test_table_and_csv_formats(models, images, capsys):
    code, table, _ = run_cli(capsys, images["good"], "--model", models["sigmoid"])
    assert code == 0
    header, *lines = table.splitlines()
    assert header.split()[:5] == ["path", "P(fake)", "label", "model", "resampled"]
    assert len(lines) == len(GOOD)
    code, text, _ = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["path"] for r in rows] == [line.split()[0] for line in lines]  # same files, same order
    for row, line in zip(rows, lines, strict=True):
        _, p, label, model, _ = line.split()  # no OOD column content without a detector file
        assert p == f"{float(row['p_fake']):.4f}" and len(p.split(".")[1]) == 4
        assert (label, model) == (row["label"], row["model"]) == (label, "sigmoid")


def test_batches_give_the_same_result_as_one_batch(models, images, capsys):
    _, one, err = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "json")
    assert "5/5" not in err  # one batch: no progress bar
    _, many, err = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "json",
                           "--batch-size", "2")  # fmt: skip
    for a, b in zip(json.loads(one), json.loads(many), strict=True):
        assert a["path"] == b["path"] and a["p_fake"] == pytest.approx(b["p_fake"], abs=1e-6)
        assert a["resampled"] == b["resampled"]
    assert "5/5" in err  # tqdm's bar on stderr: three batches


def test_ood_flag_comes_from_the_models_detector_file(models, images, capsys):
    code, out, err = run_cli(capsys, images["green"], images["white"], "--model", models["colour"], "--format", "json")
    assert code == 0
    green, white = json.loads(out)
    assert (green["ood"], white["ood"]) == (False, True)
    assert green["ood_score"] == pytest.approx(0.0, abs=1e-4)
    assert white["ood_score"] == pytest.approx(WHITE_DISTANCE, rel=1e-5)
    assert (green["p_fake"], white["p_fake"]) == pytest.approx((p_colour(GREEN), p_colour(WHITE)), abs=1e-5)
    (warning,) = stderr_lines(err)
    assert warning.startswith("realfake: warning: 1 image(s) are out of distribution") and "unreliable" in warning

    code, out, _ = run_cli(capsys, images["green"], images["white"], "--model", models["colour"])
    _, green_line, white_line = out.splitlines()
    assert green_line.endswith("  no") and white_line.endswith("yes: verdict unreliable")
    code, out, _ = run_cli(capsys, images["green"], images["white"], "--model", models["colour"], "--format", "csv")
    green, white = csv.DictReader(io.StringIO(out))
    assert (green["ood"], white["ood"]) == ("False", "True")
    assert float(white["ood_score"]) == pytest.approx(WHITE_DISTANCE, rel=1e-5)


def test_max_fpr_uses_the_threshold_stored_with_the_model(models, images, capsys):
    both = (images["green"], images["white"])
    # P(fake): green 0.150, white 0.881; stored thresholds: 0.9 for fpr_0.01, 0.5 for fpr_0.05
    code, out, err = run_cli(capsys, *both, "--model", models["colour"], "--format", "json", "--max-fpr", "0.01")
    assert code == 0 and [r["label"] for r in json.loads(out)] == ["real", "real"]
    assert "realfake: threshold 0.9000: flagged 0.80% of real validation images (at most 0.01) and caught 25.00% " \
        "of fakes" in err  # fmt: skip
    code, out, _ = run_cli(capsys, *both, "--model", models["colour"], "--format", "json", "--max-fpr", "0.05")
    assert code == 0 and [r["label"] for r in json.loads(out)] == ["real", "fake"]

    code, out, err = run_cli(capsys, *both, "--model", models["colour"], "--max-fpr", "0.02")
    assert code == 2 and out == ""
    assert stderr_lines(err) == ["realfake: --max-fpr 0.02: model colour stores thresholds for rates 0.01, 0.05"]
    code, _, err = run_cli(capsys, *both, "--model", models["sigmoid"], "--max-fpr", "0.01")
    assert code == 2 and "model sigmoid stores thresholds for rates none" in err
    code, _, err = run_cli(capsys, *both, "--model", models["colour"], "--max-fpr", "0.01", "--threshold", "0.5")
    assert code == 2 and "not allowed with argument" in err  # one way of choosing the threshold at a time


@pytest.mark.parametrize("kind", ["zip without config.json", "text file", "device"])
def test_a_file_that_is_not_a_model_exits_2_with_one_line_naming_it(images, capsys, tmp_path, monkeypatch, kind):
    if kind == "zip without config.json":
        model = tmp_path / "weights_only.keras"
        with zipfile.ZipFile(model, "w") as archive:
            archive.writestr("model.weights.h5", b"not really")
        reason = "not a Keras model file"
    elif kind == "text file":
        model = tmp_path / "notes.keras"
        model.write_text("a text file named like a model\n")
        reason = "not a Keras model file"
    else:
        model, reason = Path("/dev/zero"), "not a regular file"
        # Reading it never ends (memory fills up): should a change let it through, fail instead of reading it.
        real_zipfile = zipfile.ZipFile

        def refusing_devices(file, *args, **kwargs):
            assert not str(file).startswith("/dev/"), f"{file} was opened as a zip"
            return real_zipfile(file, *args, **kwargs)

        monkeypatch.setattr(zipfile, "ZipFile", refusing_devices)
    code, out, err = run_cli(capsys, images["cifake.jpg"], "--model", model)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"realfake: {model}: {reason}")


def test_exit_2_without_readable_images_missing_model_or_bad_usage(models, images, capsys, tmp_path):
    assert run_cli(capsys, images["bad"], "--model", models["sigmoid"])[0] == 2
    code, out, err = run_cli(capsys, images["cifake.jpg"], "--model", tmp_path / "none.keras")
    assert code == 2 and out == "" and "none.keras: model file not found" in err and "Traceback" not in err
    (tmp_path / "broken.keras").write_text("not a zip")
    code, _, err = run_cli(capsys, images["cifake.jpg"], "--model", tmp_path / "broken.keras")
    assert code == 2 and "broken.keras: not a Keras model file" in err
    assert run_cli(capsys, images["cifake.jpg"], "--threshold", "1.5")[0] == 2
    assert main([]) == 2


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"realfake {version('realfake')}\n"


def test_three_class_model_labels_its_most_probable_class(models, images, capsys):
    code, out, _ = run_cli(capsys, images["good"], "--model", models["three"], "--format", "json")
    assert code == 0
    model = keras.models.load_model(models["three"], compile=False)
    paths = [Path(r["path"]) for r in json.loads(out)]
    probabilities = model.predict(np.stack([load(p) for p in paths]).astype(np.float32), verbose=0)
    for row, probs in zip(json.loads(out), probabilities, strict=True):
        assert row["label"] == predict.SOURCE_KINDS[int(np.argmax(probs))]
        assert row["p_fake"] == pytest.approx(1 - probs[0], abs=1e-6)


def fake_repo(root: Path, models: dict[str, Path], val_accuracy: dict[str, float]) -> None:
    """A pipeline repo after a run: models/<name>.keras and metrics/train/<name>.json (validation accuracy)."""
    (root / "models").mkdir(parents=True)
    (root / "metrics" / "train").mkdir(parents=True)
    (root / "metrics" / "evaluate").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    for name, accuracy in val_accuracy.items():
        (root / "metrics" / "train" / f"{name}.json").write_text(json.dumps({"best": {"val_accuracy": accuracy}}))
        if name in models:
            (root / "models" / f"{name}.keras").write_bytes(models[name].read_bytes())


def test_default_model_is_the_best_binary_one_on_validation_accuracy(models, images, capsys, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    # "three" (3-class) and "ghost" (no model file) score higher but are not candidates.
    fake_repo(repo, {"sigmoid": models["sigmoid"], "softmax": models["softmax"], "three": models["three"]},
              {"sigmoid": 0.70, "softmax": 0.80, "three": 0.95, "ghost": 0.99})  # fmt: skip
    # Test accuracy never chooses: the lower-validation model's test score is irrelevant.
    (repo / "metrics" / "evaluate" / "sigmoid.json").write_text(json.dumps({"accuracy": 0.99}))
    # The evaluate stage's robustness report gives the accuracy on resized images that the warning cites.
    (repo / "metrics" / "robustness").mkdir()
    (repo / "metrics" / "robustness" / "softmax.json").write_text(
        json.dumps({"scores": {"none": {"accuracy": 0.9}, "downscale_2": {"accuracy": 0.8125}}})
    )
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")  # the repo is found above the current folder
    code, out, err = run_cli(capsys, images["cifake.jpg"], "--format", "json")
    assert code == 0
    assert "using model softmax" in err and "0.8000" in err
    assert f"the shipped detector's: {serving_models.shipped_validation_accuracy():.4f}" in err  # both, to compare
    [row] = json.loads(out)
    assert row["model"] == "softmax"
    code, out, err = run_cli(capsys, images["cifake.jpg"], "--format", "json", "--model", "shipped")
    assert code == 0 and json.loads(out)[0]["model"] == f"shipped:{serving_models.default_shipped_name()}"
    assert row["p_fake"] == pytest.approx(
        float(expected_p_fake(models["softmax"], [images["cifake.jpg"]])[0]), abs=1e-6
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, images["wide.png"], "--format", "json", "--repo", repo)
    assert code == 0 and json.loads(out)[0]["model"] == "softmax"
    assert "downscaled 2x and back: 0.812" in err


def test_predict_never_reads_the_repositorys_params_yaml(models, images, capsys, tmp_path):
    """The threshold belongs to the model, not to the pipeline's params: a params.yaml that would call everything
    fake (threshold 0), or one that is not even valid, changes nothing."""
    fake_repo(tmp_path, {"sigmoid": models["sigmoid"]}, {"sigmoid": 0.7})
    code, clean, _ = run_cli(capsys, images["good"], "--format", "json", "--repo", tmp_path)
    (tmp_path / "params.yaml").write_text("evaluate: {threshold: 0.0}\n: not yaml [\n")
    code_again, out, _ = run_cli(capsys, images["good"], "--format", "json", "--repo", tmp_path)
    assert code == code_again == 0 and json.loads(out) == json.loads(clean)
    assert all(r["label"] == ("fake" if r["p_fake"] >= 0.5 else "real") for r in json.loads(out))


@pytest.fixture
def shipped(models, tmp_path, monkeypatch) -> Path:
    """The colour model's ONNX export (with its detector file) and a card, standing in for the default shipped
    detector `demo`, beside a second shipped detector `other` (the colour model too, with another card)."""
    for name, resized in (("demo", 0.875), ("other", 0.5)):
        folder = tmp_path / "shipped" / name
        folder.mkdir(parents=True)
        (folder / "colour.onnx").write_bytes(models["colour_onnx"].read_bytes())
        (folder / "colour.keras").write_bytes(models["colour"].read_bytes())
        info_path(folder / "colour.keras").write_bytes(info_path(models["colour"]).read_bytes())
        files = {"onnx": "colour.onnx", "keras": "colour.keras", "detector": "colour.detector.npz"}
        card = {"files": files, "robustness": {"none": 0.97, "downscale_2": resized}, "test": {"threshold": 0.5}}
        (folder / "card.json").write_text(json.dumps(card))
    (tmp_path / "shipped" / "DEFAULT").write_text("demo\n")
    monkeypatch.setattr(serving_models, "SHIPPED", tmp_path / "shipped")
    return tmp_path / "shipped" / "demo" / "colour.onnx"


def test_default_model_outside_a_repo_is_the_shipped_detector(shipped, images, capsys):
    code, out, err = run_cli(capsys, images["green64"], images["white"], "--format", "json")
    assert code == 0
    assert f"realfake: using the detector shipped with realfake, shipped:demo ({shipped};" in err
    green, white = json.loads(out)
    assert green["model"] == white["model"] == "shipped:demo"
    assert (green["resampled"], white["resampled"]) == (True, False)
    assert (green["ood"], white["ood"]) == (False, True)  # its detector file came along
    assert green["p_fake"] == pytest.approx(p_colour(GREEN), abs=1e-4)
    assert "downscaled 2x and back: 0.875" in err  # the card's measured accuracy on resized images


def test_another_shipped_detector_is_reachable_by_name_and_detectors_lists_them(shipped, images, capsys):
    code, out, err = run_cli(capsys, images["green64"], "--format", "json", "--model", "shipped:other")
    assert code == 0 and json.loads(out)[0]["model"] == "shipped:other"
    assert "downscaled 2x and back: 0.500" in err  # its own card's figure, not the default's
    code, out, err = run_cli(capsys, images["green64"], "--model", "shipped:nope")
    assert code == 2 and "no shipped detector 'nope'; shipped here: shipped:demo, shipped:other" in err
    code, out, err = run_cli(capsys, images["green64"], "--model", "shipped:../demo")  # a name, never a path
    assert code == 2 and "no shipped detector '../demo'" in err
    assert main(["detectors"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[:3] for row in rows[1:3]] == [["shipped:demo", "yes", "?"], ["shipped:other", "?", "-"]]


def test_no_trained_binary_model_is_a_clear_error(models, images, capsys, tmp_path, shipped):
    # A repo whose only trained model is the 3-class one: the pipeline has models, none binary.
    fake_repo(tmp_path / "repo", {"three": models["three"]}, {"three": 0.9, "ghost": 0.95})
    code, _, err = run_cli(capsys, images["cifake.jpg"], "--repo", tmp_path / "repo")
    assert code == 2 and "no trained binary model" in err and "Traceback" not in err
    # A repo with no trained model at all uses the shipped one; when that is missing, it says so.
    fake_repo(tmp_path / "empty", {}, {"ghost": 0.9})
    shipped.unlink()
    code, _, err = run_cli(capsys, images["cifake.jpg"], "--repo", tmp_path / "empty")
    assert code == 2 and "the shipped detector is missing from this installation" in err and "Traceback" not in err


def test_models_uri_without_a_store_names_the_ways_to_give_one(images, capsys):
    # Outside any repo (the current folder has no dvc.yaml and no mlflow.db) and without MLFLOW_TRACKING_URI.
    code, out, err = run_cli(capsys, images["cifake.jpg"], "--model", "models:/realfake-x/1")
    assert code == 2 and out == "" and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("realfake: models:/realfake-x/1: no MLflow store")
    assert "--repo" in line and "MLFLOW_TRACKING_URI" in line
    assert list(Path.cwd().iterdir()) == []  # no mlflow.db (nor anything else) was created here


def test_mlflow_runs_and_models_uris(models, images, capsys, mlflow_uri, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(models["sigmoid"]))
        mlflow.log_artifact(str(models["softmax"]), artifact_path="classifier")
    # A registered version whose files are a plain .keras (no MLmodel), as a stage logging the file would make.
    client = mlflow.MlflowClient()
    client.create_registered_model("realfake-tiny")
    source = f"{run.info.artifact_uri}/classifier"
    version = client.create_model_version("realfake-tiny", source, run_id=run.info.run_id).version
    want = float(expected_p_fake(models["sigmoid"], [images["cifake.jpg"]])[0])
    uri = f"runs:/{run.info.run_id}/sigmoid.keras"
    code, out, _ = run_cli(capsys, images["cifake.jpg"], "--model", uri, "--format", "json")
    assert code == 0
    assert json.loads(out)[0]["model"] == uri and json.loads(out)[0]["p_fake"] == pytest.approx(want, abs=1e-6)
    uri = f"models:/realfake-tiny/{version}"
    code, out, _ = run_cli(capsys, images["cifake.jpg"], "--model", uri, "--format", "json")
    want = float(expected_p_fake(models["softmax"], [images["cifake.jpg"]])[0])
    assert code == 0 and json.loads(out)[0]["p_fake"] == pytest.approx(want, abs=1e-6)
    code, _, err = run_cli(capsys, images["cifake.jpg"], "--model", "models:/no-such-model/1")
    assert code == 2 and "could not download it from the MLflow store" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, images["cifake.jpg"], "--model", f"runs:/{run.info.run_id}/")
    assert code == 2 and "several .keras files" in err


def test_models_uri_with_the_champion_alias(models, images, capsys, tmp_path, monkeypatch):
    import mlflow

    from realfake.pipeline import model_registry, tracking

    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    with tracking.stage_run("train", repo_root=repo, experiment="predict-test", params={"model": "colour"}):
        model_registry.log_registered_model(
            models["colour"], registered_name="realfake-colour", class_names=("real", "fake"),
            image_shape=(32, 32, 3), batch_size=8, summary={"best": {"val_accuracy": 0.9}},
            selection_metric="best.val_accuracy", extra_artifacts={"detector": info_path(models["colour"])},
        )  # fmt: skip
    uri = "models:/realfake-colour@champion"
    both = (images["green"], images["white"])
    code, out, err = run_cli(capsys, *both, "--model", uri, "--format", "json", "--max-fpr", "0.05")
    assert code == 0, err
    green, white = json.loads(out)
    assert green["model"] == white["model"] == uri
    assert (green["label"], white["label"]) == ("real", "fake")
    assert (green["ood"], white["ood"]) == (False, True)  # the detector file was registered with the model
    assert white["p_fake"] == pytest.approx(p_colour(WHITE), abs=1e-5)

    # The same through --repo (its mlflow.db), with neither MLFLOW_TRACKING_URI nor a tracking URI set in MLflow.
    mlflow.set_tracking_uri(None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_cli(capsys, *both, "--model", uri, "--repo", repo, "--format", "json")
    assert code == 0, err
    assert [r["label"] for r in json.loads(out)] == ["real", "fake"]
    assert list(Path.cwd().iterdir()) == []  # nothing (no MLflow store of its own) was created here


# ---- the command in its own process ------------------------------------------------------------------


def run_process(*args, cwd: Path, env: dict | None = None, text: bool = True) -> subprocess.CompletedProcess:
    """`realfake predict ARGS` in a new Python process (python -m, so it runs whatever the installed scripts say)."""
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "realfake.serving.cli", "predict", *map(os.fsencode, args)],
        cwd=cwd, env=environment, capture_output=True, text=text, timeout=120,
    )  # fmt: skip


def test_a_pipe_named_like_an_image_is_reported_and_skipped(models, images, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "green.png").write_bytes(images["green"].read_bytes())
    os.mkfifo(folder / "x.jpg")  # opening it would wait for a writer forever
    os.mkfifo(tmp_path / "given.png")
    result = run_process(folder, tmp_path / "given.png", "--model", models["sigmoid"], "--format", "json",
                         cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert [row["path"] for row in json.loads(result.stdout)] == [str(folder / "green.png")]
    assert f"{folder / 'x.jpg'}: not a regular file" in result.stderr
    assert f"{tmp_path / 'given.png'}: not a regular file" in result.stderr


def test_undecodable_file_names_give_utf8_output(models, images, tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), b"photos")
    os.mkdir(folder)
    with open(os.path.join(folder, b"bad\xff.jpg"), "wb") as handle:
        handle.write(images["cifake.jpg"].read_bytes())
    strict = {"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    result = run_process(folder, "--model", models["sigmoid"], "--format", "json", cwd=tmp_path, env=strict,
                         text=False)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    (row,) = json.loads(result.stdout.decode("utf-8"))  # strict: fails on any invalid byte
    assert row["path"] == f"{tmp_path}/photos/bad\\xff.jpg"
    row["path"].encode("utf-8")  # no lone surrogate: it would not encode


def test_undecodable_file_names_in_tables_and_messages(models, images, tmp_path, capsys):
    folder = os.path.join(os.fsencode(tmp_path), b"photos")
    os.mkdir(folder)
    with open(os.path.join(folder, b"bad\xff.jpg"), "wb") as handle:
        handle.write(images["cifake.jpg"].read_bytes())
    with open(os.path.join(folder, b"broken\xfe.png"), "wb") as handle:
        handle.write(b"not an image")
    code, out, err = run_cli(capsys, os.fsdecode(folder), "--model", models["sigmoid"])
    assert code == 1
    (line,) = out.splitlines()[1:]
    assert line.startswith(f"{tmp_path}/photos/bad\\xff.jpg ")
    assert f"{tmp_path}/photos/broken\\xfe.png: not an image format" in err
    (out + err).encode("utf-8")  # no lone surrogate in either


def test_console_script(models, images):
    script = Path(sys.executable).parent / "realfake"
    assert "realfake.serving.cli" in script.read_text(), f"{script} predates the package's layout: pip install -e ."
    result = subprocess.run(
        [script, "predict", images["good"], images["text"], "--model", models["sigmoid"], "--format", "csv"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == len(GOOD)
    assert f"{images['text']}: not an image format" in result.stderr


# ---- the ONNX path: same numbers as Keras, no TensorFlow, bounded memory -------------------------------------


def json_rows(capsys, *args) -> list[dict]:
    code, out, err = run_cli(capsys, *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("name", ["sigmoid", "softmax", "three", "colour"])
def test_an_onnx_model_gives_the_keras_models_numbers(models, images, capsys, name):
    paths = [images[n] for n in GOOD] + [images["green"], images["white"], images["green64"]]
    for extra in ([], ["--max-fpr", "0.01"], ["--max-fpr", "0.05"]) if name == "colour" else ([],):
        via_keras = json_rows(capsys, *paths, "--model", models[name], *extra)
        via_onnx = json_rows(capsys, *paths, "--model", models[f"{name}_onnx"], *extra)
        for k, o in zip(via_keras, via_onnx, strict=True):
            assert abs(k["p_fake"] - o["p_fake"]) <= 1e-5
            assert (k["path"], k["label"], k["model"], k["resampled"], k["ood"]) == (
                o["path"], o["label"], o["model"], o["resampled"], o["ood"])  # fmt: skip
            if k["ood_score"] is not None:
                assert o["ood_score"] == pytest.approx(k["ood_score"], rel=1e-4, abs=1e-4)


NO_HEAVY_IMPORTS = """
import json, sys
from realfake.serving.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "mlflow", "jax", "torch"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def run_without_heavy_imports(*args, cwd: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, "predict", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return {**report, "stdout": result.stdout, "stderr": result.stderr}


def test_predict_on_onnx_imports_neither_tensorflow_keras_nor_mlflow(models, images, shipped, tmp_path, monkeypatch):
    given = run_without_heavy_imports(images["good"], "--model", models["colour_onnx"], "--format", "json",
                                      cwd=tmp_path)  # fmt: skip
    assert given["code"] == 0 and given["heavy"] == [], given["stderr"]
    assert len(json.loads(given["stdout"])) == len(GOOD)
    # The default outside a repository: the real default shipped detector (the fixture's patch is in-process only).
    monkeypatch.undo()
    real = serving_models.shipped_detector()
    default = run_without_heavy_imports(images["cifake.jpg"], "--max-fpr", "0.01", cwd=tmp_path)
    assert default["code"] == 0 and default["heavy"] == [], default["stderr"]
    assert str(real.file("onnx")) in default["stderr"] and f"shipped:{real.name}" in default["stdout"]


def test_a_pipeline_model_runs_from_its_current_onnx_export_else_through_keras(models, images, tmp_path):
    repo = tmp_path / "repo"
    fake_repo(repo, {"colour": models["colour"]}, {"colour": 0.9})
    info_path(repo / "models" / "colour.keras").write_bytes(info_path(models["colour"]).read_bytes())
    (repo / "models" / "colour.onnx").write_bytes(models["colour_onnx"].read_bytes())
    current = run_without_heavy_imports(images["green"], images["white"], "--repo", repo, "--format", "json",
                                        cwd=tmp_path)  # fmt: skip
    assert current["code"] == 0 and current["heavy"] == [], current["stderr"]
    assert (
        f"({repo / 'models' / 'colour.onnx'}), the best binary model" in current["stderr"]
        and "validation accuracy 0.9000" in current["stderr"]
    )
    assert [r["ood"] for r in json.loads(current["stdout"])] == [False, True]
    (repo / "models" / "colour.onnx").write_bytes(models["sigmoid_onnx"].read_bytes())  # another model's export
    stale = run_without_heavy_imports(images["green"], "--repo", repo, "--format", "json", cwd=tmp_path)
    assert stale["code"] == 0 and "keras" in stale["heavy"]
    assert "exported from another version of colour.keras" in stale["stderr"]
    assert json.loads(stale["stdout"])[0]["p_fake"] == pytest.approx(p_colour(GREEN), abs=1e-5)


def peak_rss_mb(*args, cwd: Path) -> float:
    """Peak resident memory of `realfake predict ARGS` in a child process (its own VmHWM, in MB: getrusage's
    ru_maxrss would include the RSS of the forking parent, which Linux carries across exec)."""
    code = (
        "import sys\nfrom realfake.serving.cli import main\nrc = main(sys.argv[1:])\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(status.split('VmHWM:')[1].split()[0]) / 1024, file=sys.stderr)\nsys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, "predict", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return float(result.stderr.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_number_of_files(models, tmp_path):
    rng = np.random.default_rng(1)
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, count in ((small, 64), (large, 1600)):
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05}.jpg")
    few = peak_rss_mb(small, "--model", models["colour_onnx"], "--batch-size", "64", "--format", "csv", cwd=tmp_path)
    many = peak_rss_mb(large, "--model", models["colour_onnx"], "--batch-size", "64", "--format", "csv", cwd=tmp_path)
    assert many - few < 15, f"peak RSS {few:.0f} MB for 64 files, {many:.0f} MB for 1,600"


def test_a_large_photo_is_reduced_while_decoding_and_still_looks_the_same(tmp_path):
    gradient = np.zeros((2400, 3200, 3), np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 3200, dtype=np.uint8)[None, :]
    gradient[..., 1] = np.linspace(0, 255, 2400, dtype=np.uint8)[:, None]
    gradient[..., 2] = 90
    full = Image.fromarray(gradient)
    full.save(tmp_path / "big.jpg", quality=90)
    full.save(tmp_path / "big.png")
    reference = np.asarray(ImageOps.fit(full, SIZE, method=Image.Resampling.LANCZOS), dtype=int)
    for name in ("big.jpg", "big.png"):
        pixels, resampled = predict.load_image(tmp_path / name, size=SIZE, max_pixels=predict.MAX_PIXELS)
        assert resampled and pixels.shape == (32, 32, 3)
        assert np.abs(pixels.astype(int) - reference).mean() < 2.0, name  # the same picture, to a level or two


def test_ctrl_c_in_the_middle_of_a_folder_exits_130_with_one_line(models, tmp_path):
    import signal
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3000):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:05}.png")
    # a shell's background job inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler; a
    # handled (not ignored) SIGINT here is reset to the default at exec, so the child gets Ctrl-C as a terminal's
    # foreground job would (without preexec_fn, which is unsafe in a process with threads)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "realfake.serving.cli", "predict", str(folder), "--model",
             str(models["colour_onnx"]), "--batch-size", "1", "--format", "json"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, ignored)
    process.stdout.readline()  # results are coming: it is in the middle of the folder (and nobody reads on)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in err and lines[-1] == "realfake: interrupted"
    assert sum(line.startswith("realfake:") for line in lines) == 1  # that one line (--model: no "using ..." line)


def test_a_newline_in_a_file_name_stays_on_its_line_of_the_table(models, images, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "two\nlines.png").write_bytes(images["green"].read_bytes())
    (folder / "bell\x07.png").write_bytes(images["white"].read_bytes())
    code, out, _ = run_cli(capsys, folder, "--model", models["colour_onnx"])
    assert code == 0
    header, *rows = out.splitlines()
    assert len(rows) == 2 and {row.split()[0] for row in rows} == {
        f"{folder}/two\\nlines.png",
        f"{folder}/bell\\x07.png",
    }
    rows = json_rows(capsys, folder, "--model", models["colour_onnx"])
    assert {r["path"] for r in rows} == {f"{folder}/two\nlines.png", f"{folder}/bell\x07.png"}  # JSON escapes itself


def test_serving_imports_nothing_from_the_pipeline_and_explain_says_it_needs_tensorflow(capsys):
    import ast

    serving = Path(predict.__file__).parent
    for source in serving.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            assert not [n for n in names if n.startswith("realfake.pipeline")], f"{source.name} imports {names}"
    assert main(["explain", "--help"]) == 0
    assert "TensorFlow" in " ".join(capsys.readouterr().out.split())
