"""`realfake predict`: image discovery and decoding, model choice, outputs, exit codes, the console script."""

import csv
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from realfake import predict
from realfake.cli import main

SIZE = (32, 32)
GREEN = (30, 200, 60)
INK = (10, 20, 30)


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch):
    """The command sets Pillow's process-wide bomb limit; put it back for the rest of the test session."""
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


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    files = {}
    for name, outputs, activation in [("sigmoid", 1, "sigmoid"), ("softmax", 2, "softmax"), ("three", 3, "softmax")]:
        files[name] = folder / f"{name}.keras"
        tiny_model(outputs, activation, seed=outputs).save(files[name])
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
    return files


GOOD = ("cifake.jpg", "wide.png", "gray.png", "rgba.png", "nested")
BAD = ("truncated", "text", "bomb")


def load(path: Path, max_pixels: int = predict.MAX_PIXELS) -> np.ndarray:
    return predict.load_image(path, size=SIZE, max_pixels=max_pixels)


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
    pixels = load(images["cifake.jpg"])
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    np.testing.assert_array_equal(pixels, decoded)


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


# ---- the command -----------------------------------------------------------------------------------


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


def test_table_and_csv_formats(models, images, capsys):
    code, table, _ = run_cli(capsys, images["good"], "--model", models["sigmoid"])
    assert code == 0
    header, *lines = table.splitlines()
    assert header.split() == ["path", "P(fake)", "label", "model"]
    assert len(lines) == len(GOOD)
    code, text, _ = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["path"] for r in rows] == [line.split()[0] for line in lines]  # same files, same order
    for row, line in zip(rows, lines, strict=True):
        _, p, label, model = line.split()
        assert p == f"{float(row['p_fake']):.4f}" and len(p.split(".")[1]) == 4
        assert (label, model) == (row["label"], row["model"]) == (label, "sigmoid")


def test_batches_give_the_same_result_as_one_batch(models, images, capsys):
    _, one, _ = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "json")
    _, many, err = run_cli(capsys, images["good"], "--model", models["sigmoid"], "--format", "json",
                           "--batch-size", "2")  # fmt: skip
    for a, b in zip(json.loads(one), json.loads(many), strict=True):
        assert a["path"] == b["path"] and a["p_fake"] == pytest.approx(b["p_fake"], abs=1e-6)
    assert "image" in err  # tqdm's bar on stderr: three batches


def test_exit_2_without_readable_images_missing_model_or_bad_usage(models, images, capsys, tmp_path):
    assert run_cli(capsys, images["bad"], "--model", models["sigmoid"])[0] == 2
    code, out, err = run_cli(capsys, images["cifake.jpg"], "--model", tmp_path / "none.keras")
    assert code == 2 and out == "" and "none.keras: no such model file" in err and "Traceback" not in err
    (tmp_path / "broken.keras").write_text("not a zip")
    code, _, err = run_cli(capsys, images["cifake.jpg"], "--model", tmp_path / "broken.keras")
    assert code == 2 and "not a loadable Keras model" in err
    assert run_cli(capsys, images["cifake.jpg"], "--threshold", "1.5")[0] == 2
    assert main([]) == 2


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
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")  # the repo is found above the current folder
    code, out, err = run_cli(capsys, images["cifake.jpg"], "--format", "json")
    assert code == 0
    assert "using model softmax" in err and "0.8000" in err
    [row] = json.loads(out)
    assert row["model"] == "softmax"
    assert row["p_fake"] == pytest.approx(
        float(expected_p_fake(models["softmax"], [images["cifake.jpg"]])[0]), abs=1e-6
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, images["cifake.jpg"], "--format", "json", "--repo", repo)
    assert code == 0 and json.loads(out)[0]["model"] == "softmax"


def test_default_threshold_comes_from_params_yaml(models, images, capsys, tmp_path):
    fake_repo(tmp_path, {"sigmoid": models["sigmoid"]}, {"sigmoid": 0.7})
    (tmp_path / "params.yaml").write_text(
        "evaluate: {batch_size: 8, threshold: 0.0, n_bootstrap: 10, confidence: 0.95, roc_max_points: 10}\n"
    )
    code, out, _ = run_cli(capsys, images["good"], "--format", "json", "--repo", tmp_path)
    assert code == 0 and {r["label"] for r in json.loads(out)} == {"fake"}  # P(fake) >= 0 always


def test_no_trained_model_is_a_clear_error(images, capsys, tmp_path):
    fake_repo(tmp_path, {}, {"ghost": 0.9})
    code, _, err = run_cli(capsys, images["cifake.jpg"], "--repo", tmp_path)
    assert code == 2 and "no trained binary model" in err and "Traceback" not in err


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


def test_console_script(models, images):
    script = Path(sys.executable).parent / "realfake"
    result = subprocess.run(
        [script, "predict", images["good"], images["text"], "--model", models["sigmoid"], "--format", "csv"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == len(GOOD)
    assert f"{images['text']}: not an image format" in result.stderr
