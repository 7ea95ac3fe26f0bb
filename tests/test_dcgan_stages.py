"""Stages train_dcgan and generate on a tiny raw dataset with a tiny DCGAN: declared outputs, resume after an
interruption, generated JPEGs stored exactly as CIFAKE's, and clear errors for bad input."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import yaml
from cifake_fixture import synthetic_image
from conftest import DATA_DIR
from mlflow.tracking import MlflowClient
from PIL import Image, JpegImagePlugin

from realfake.data import generated as generation
from realfake.data.cifake import RawDataset, pixel_digests
from realfake.errors import ParamsError, RealfakeError
from realfake.fileio import load_arrays, save_arrays
from realfake.models.dcgan import build_dcgan, generate_images, load_generator
from realfake.params import DcganParams, load_params
from realfake.paths import ProjectPaths
from realfake.training import gan
from realfake.training.state import EpochBackup, fingerprint

REPO = Path(__file__).resolve().parents[1]
CIFAKE_SMALL = DATA_DIR / "cifake-small.zip"
N_DISTINCT_REAL_TRAIN = 20
TINY = {
    "dcgan": dict(noise_dim=8, dense_filters=8, g_filters=[8, 4], d_filters=[4, 8], kernel_size=3, dropout=0.3,
                  learning_rate=0.001, beta_1=0.5, epochs=2, batch_size=8, max_train_minutes=None,
                  precision="float32", sample_every=1, sample_grid=2, max_images=None, quality_images=2,
                  quality_model="fast"),
    "generate": dict(n_train=6, n_test=4, batch_size=4, jpeg_quality=75, jpeg_subsampling="4:2:0"),
}  # fmt: skip


def load_stage(name: str):
    """Import stages/<name>.py (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_dcgan = load_stage("train_dcgan")
generate = load_stage("generate")


def tiny_raw() -> RawDataset:
    """20 distinct train/REAL images plus a duplicate of one and a copy of a test image; a few of the rest."""
    rng = np.random.default_rng(0)
    real_train = [synthetic_image(rng, fake=False) for _ in range(N_DISTINCT_REAL_TRAIN)]
    test_real = [synthetic_image(rng, fake=False) for _ in range(4)]
    groups = [  # (split, label, images): split 0 = train, 1 = test; label 0 = REAL, 1 = FAKE
        (0, 0, [*real_train, real_train[3], test_real[1]]),
        (0, 1, [synthetic_image(rng, fake=True) for _ in range(4)]),
        (1, 0, test_real),
        (1, 1, [synthetic_image(rng, fake=True) for _ in range(2)]),
    ]
    images = np.stack([im for _, _, ims in groups for im in ims])
    split = np.concatenate([np.full(len(ims), s, np.uint8) for s, _, ims in groups])
    label = np.concatenate([np.full(len(ims), c, np.uint8) for _, c, ims in groups])
    names = np.array([f"image{i}.jpg" for i in range(len(images))])
    return RawDataset(images, split, label, names, pixel_digests(images))


def tiny_detector() -> keras.Model:
    """A seeded stand-in for the trained fast detector: its 4 penultimate features are pooled random filters."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x), name="fast")


def tiny_dcgan(**overrides) -> DcganParams:
    """TINY's DCGAN params as the library takes them."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY["dcgan"].items()}
    return DcganParams(**values | overrides)


def make_project(root: Path, **overrides) -> tuple[ProjectPaths, argparse.Namespace]:
    """A project folder with the tiny raw dataset, a tiny detector for the quality features, and the repo's
    params.yaml with every DCGAN value set by TINY (plus overrides)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values, **overrides.get(section, {}))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    paths = ProjectPaths(root)
    save_arrays(paths.raw_dataset, **tiny_raw().arrays())
    paths.models.mkdir(parents=True, exist_ok=True)
    tiny_detector().save(paths.model_file("fast"))
    return paths, argparse.Namespace(params=root / "params.yaml")


def runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("realfake")
    return sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)


def jpeg_tables_of_pillow_quality_75() -> dict:
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(np.random.default_rng(1), fake=False)).save(buf, format="JPEG", quality=75)
    return Image.open(buf).quantization


# ----------------------------------------------------------------------------- fixtures: one trained project


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_dcgan interrupted right after epoch 1 was backed up, then run again to completion."""
    root = tmp_path_factory.mktemp("project")
    paths, args = make_project(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    backup_epoch_end = EpochBackup.on_epoch_end

    def stop_after_first_backup(self, epoch, logs=None):
        backup_epoch_end(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt  # what Ctrl-C or a killed `dvc repro` leaves behind

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setattr(EpochBackup, "on_epoch_end", stop_after_first_backup)
        with pytest.raises(KeyboardInterrupt):
            train_dcgan.main(paths, args)
    [state] = [p for p in (paths.state / "train_dcgan").iterdir() if p.is_dir()]  # beside it: its .lock file
    before = SimpleNamespace(
        history=json.loads((state / gan.HISTORY).read_text()),
        samples=sorted(p.name for p in (state / gan.SAMPLES).iterdir()),
        epoch1_png=(state / gan.SAMPLES / "epoch_001.png").read_bytes(),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        train_dcgan.main(paths, args)
    return SimpleNamespace(paths=paths, args=args, uri=uri, state=state, before=before)


@pytest.fixture(scope="module")
def generated(trained):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained.uri)
        generate.main(trained.paths, trained.args)
    return trained.paths


# ----------------------------------------------------------------------------- library: generation.py


def test_real_train_images_drop_duplicates_test_copies_and_other_folders():
    raw = tiny_raw()
    images = generation.real_train_images(raw)
    assert images.shape == (N_DISTINCT_REAL_TRAIN, 32, 32, 3)
    np.testing.assert_array_equal(images, raw.images[:N_DISTINCT_REAL_TRAIN])  # first copies, in order


def test_sample_grid_places_tiles_row_by_row():
    tiles = np.stack([np.full((32, 32, 3), 10 * i, np.uint8) for i in range(1, 6)])
    grid = generation.sample_grid(tiles, columns=3)
    pad, scale = generation.GRID_PADDING, generation.GRID_SCALE
    assert grid.shape == ((pad + 2 * (32 + pad)) * scale, (pad + 3 * (32 + pad)) * scale, 3)
    tile = grid[::scale, ::scale]
    assert tile[pad + 34 + 5, pad + 34 + 5, 0] == 50  # 5th tile: second row, second column
    assert tile[pad + 34 + 5, pad + 2 * 34 + 5, 0] == generation.GRID_BACKGROUND  # 6th cell is empty


def test_jpeg_roundtrip_gives_what_pillow_decodes():
    image = synthetic_image(np.random.default_rng(2), fake=True)
    [data] = generation.encode_jpegs(image[None], quality=75, subsampling="4:2:0")
    decoded = generation.decode_jpegs([data])
    np.testing.assert_array_equal(decoded[0], np.asarray(Image.open(io.BytesIO(data))))
    assert 0 < np.abs(decoded[0].astype(int) - image).mean() < 10  # lossy, but close
    with pytest.raises(ValueError, match="uint8 RGB"):
        generation.encode_jpeg(image.astype(np.float32), quality=75, subsampling="4:2:0")


# ----------------------------------------------------------------------------- stage train_dcgan


def test_train_dcgan_writes_every_declared_output(trained):
    paths = trained.paths
    model_file = paths.model_file("dcgan_generator")
    generator = keras.models.load_model(model_file, compile=False, safe_mode=True)
    images = generate_images(generator, count=3, noise_dim=8, seed=0, batch_size=2)
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)

    samples = paths.plots / "dcgan" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["epoch_001.png", "epoch_002.png", "final.png"]
    with Image.open(samples / "final.png") as im:
        assert im.format == "PNG" and im.size == ((2 + 2 * 34) * 2,) * 2  # 2x2 tiles of 32 px, padded, x2
    # The final grid comes from the saved generator and the same fixed noise as the last epoch's grid.
    assert (samples / "final.png").read_bytes() == (samples / "epoch_002.png").read_bytes()

    with open(paths.plots / "dcgan" / "losses.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == ["epoch", "d_loss", "g_loss"]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("d_loss", "g_loss"))

    metrics = json.loads((paths.metrics / "dcgan.json").read_text())
    assert metrics["train_images"] == N_DISTINCT_REAL_TRAIN and metrics["epochs"] == 2
    assert metrics["final"] == {"d_loss": float(rows[1]["d_loss"]), "g_loss": float(rows[1]["g_loss"])}
    assert metrics["images_per_s"] == pytest.approx(2 * N_DISTINCT_REAL_TRAIN / metrics["train_seconds"])
    assert not metrics["stopped_by_budget"]
    assert metrics["training_fingerprint"] == trained.state.name  # the params and data it trained with
    assert not trained.state.exists()  # cleared after success

    with open(paths.plots / "dcgan" / "quality.csv") as fh:
        curve = list(csv.DictReader(fh))
    assert list(curve[0]) == ["epoch", "frechet_distance", "diversity_ratio"]
    assert [r["epoch"] for r in curve] == ["0", "1", "2"]  # 0: the untrained generator; then every sampled epoch
    quality = metrics["quality"]
    assert quality["frechet_distance"] == float(curve[-1]["frechet_distance"])
    assert quality["diversity_ratio"] == float(curve[-1]["diversity_ratio"])
    assert quality["frechet_distance_untrained"] == float(curve[0]["frechet_distance"])
    assert quality["images_per_set"] == 2 and quality["features"] == 4 and quality["feature_model"] == "fast"
    assert all(np.isfinite(v) and v >= 0 for v in (quality["frechet_distance_real_vs_real"], *quality.values())
               if isinstance(v, float))  # fmt: skip


def test_train_dcgan_resumes_after_the_last_backed_up_epoch(trained):
    assert [e["epoch"] for e in trained.before.history] == [1] and trained.before.samples == ["epoch_001.png"]
    metrics = json.loads((trained.paths.metrics / "dcgan.json").read_text())
    assert metrics["resumed_epochs"] == 1  # Keras restarted at epoch 2, not 1
    with open(trained.paths.plots / "dcgan" / "losses.csv") as fh:
        first = next(csv.DictReader(fh))
    assert float(first["d_loss"]) == trained.before.history[0]["d_loss"]  # carried over, not retrained
    # The grid made before the interruption survived DVC-style deletion of the outputs (it lives in the state).
    assert (trained.paths.plots / "dcgan" / "samples" / "epoch_001.png").read_bytes() == trained.before.epoch1_png

    killed, finished = [r for r in runs(trained.uri) if r.data.tags["stage"] == "train_dcgan"]
    assert killed.info.status == "KILLED" and finished.info.status == "FINISHED"
    client = MlflowClient(trained.uri)
    for run, steps in ((killed, [1]), (finished, [1, 2])):
        for key in ("d_loss", "g_loss"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps
    # The quality curve survives the interruption too: epoch 1's measurement is carried over, 0 is the untrained one.
    for key in ("frechet_distance", "diversity_ratio"):
        assert sorted(m.step for m in client.get_metric_history(finished.info.run_id, key)) == [0, 1, 2]
    with open(trained.paths.plots / "dcgan" / "quality.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[1]["frechet_distance"]) == trained.before.history[0]["frechet_distance"]
    artifacts = {a.path for a in client.list_artifacts(finished.info.run_id, "dcgan/samples")}
    assert "dcgan/samples/final.png" in artifacts


def test_a_dcgan_killed_after_its_last_backup_is_not_trained_again(tmp_path, monkeypatch):
    dcgan = tiny_dcgan(epochs=1)
    images = generation.real_train_images(tiny_raw())
    state = tmp_path / "state"

    def killed_before_the_backup_is_dropped(self, logs=None):
        raise KeyboardInterrupt  # fit's last step: the final backup is committed, fit has not returned

    with monkeypatch.context() as mp:
        mp.setattr(EpochBackup, "on_train_end", killed_before_the_backup_is_dropped)
        with pytest.raises(KeyboardInterrupt):
            gan.train_dcgan(images, state, dcgan=dcgan, seed=0)
    trained = json.loads((state / gan.HISTORY).read_text())
    assert [e["epoch"] for e in trained] == [1]

    records = []
    result = gan.train_dcgan(images, state, dcgan=dcgan, seed=0, on_record=records.append)
    assert result.resumed_epochs == 1 and result.history == trained  # carried over, nothing trained again
    assert records == trained  # every epoch still reaches on_record (the stage logs them to MLflow)


def fake_clock(seconds_per_epoch: float) -> SimpleNamespace:
    """Stands in for the `time` module of training.gan: every epoch lasts `seconds_per_epoch` (2 readings each)."""
    readings = iter(range(10**6))
    return SimpleNamespace(perf_counter=lambda: next(readings) * seconds_per_epoch)


def test_the_budget_stops_training_early_and_an_interrupted_run_resumes_to_the_same_end(tmp_path, monkeypatch):
    # 30 s epochs, 2-minute budget: after epoch 4, 120 s + another 30 s would pass 120 s, so it stops at 4 of 10
    dcgan = tiny_dcgan(epochs=10, max_train_minutes=2.0, sample_every=3)
    images = generation.real_train_images(tiny_raw())
    monkeypatch.setattr(gan, "time", fake_clock(30.0))
    whole = gan.train_dcgan(images, tmp_path / "whole", dcgan=dcgan, seed=0)
    assert [e["epoch"] for e in whole.history] == [1, 2, 3, 4] and whole.stopped_by_budget
    assert sorted(p.name for p in whole.samples.iterdir()) == ["epoch_003.png", "epoch_004.png"]  # the last too

    backup_epoch_end = EpochBackup.on_epoch_end

    def killed_after_epoch_2(self, epoch, logs=None):
        backup_epoch_end(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(EpochBackup, "on_epoch_end", killed_after_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            gan.train_dcgan(images, tmp_path / "split", dcgan=dcgan, seed=0)
    monkeypatch.setattr(gan, "time", fake_clock(30.0))
    resumed = gan.train_dcgan(images, tmp_path / "split", dcgan=dcgan, seed=0)
    assert resumed.resumed_epochs == 2 and resumed.stopped_by_budget
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3, 4]
    assert [e["train_seconds"] for e in resumed.history] == [e["train_seconds"] for e in whole.history]

    # A run stopped by the budget and killed before fit returned is not trained further on the next call.
    def killed_before_the_backup_is_dropped(self, logs=None):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(EpochBackup, "on_train_end", killed_before_the_backup_is_dropped)
        with pytest.raises(KeyboardInterrupt):
            gan.train_dcgan(images, tmp_path / "late", dcgan=dcgan, seed=0)
    again = gan.train_dcgan(images, tmp_path / "late", dcgan=dcgan, seed=0)
    assert again.resumed_epochs == 4 and [e["epoch"] for e in again.history] == [1, 2, 3, 4]
    assert again.stopped_by_budget


def test_a_mixed_bfloat16_dcgan_trains_and_its_saved_generator_makes_float32_images(tmp_path):
    dcgan = tiny_dcgan()
    model = build_dcgan(
        noise_dim=dcgan.noise_dim, dense_filters=dcgan.dense_filters, g_filters=dcgan.g_filters,
        d_filters=dcgan.d_filters, kernel_size=dcgan.kernel_size, dropout=dcgan.dropout,
        learning_rate=dcgan.learning_rate, beta_1=0.5, precision="mixed_bfloat16", seed=0,
    )  # fmt: skip
    assert model.generator.layers[1].compute_dtype == "bfloat16"  # the Dense after the input
    assert model.generator.layers[1].variable_dtype == "float32"
    noise = np.random.default_rng(0).standard_normal((4, dcgan.noise_dim)).astype(np.float32)
    assert keras.backend.standardize_dtype(model.generator(noise).dtype) == "float32"
    assert keras.backend.standardize_dtype(model.discriminator(np.zeros((4, 32, 32, 3))).dtype) == "float32"
    assert float(model.d_optimizer.beta_1) == 0.5
    history = model.fit(generation.real_train_images(tiny_raw()).astype(np.float32), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["d_loss"]).all() and np.isfinite(history.history["g_loss"]).all()

    model.generator.save(tmp_path / "generator.keras")
    loaded = load_generator(tmp_path / "generator.keras")
    assert keras.backend.standardize_dtype(loaded(noise).dtype) == "float32"
    images = generate_images(loaded, count=3, noise_dim=dcgan.noise_dim, seed=0, batch_size=2)
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)


def test_train_dcgan_fingerprint_follows_params_and_images():
    # the stage's state folder: fingerprint(dcgan params, seed, arrays=[the training images])
    params = tiny_dcgan()
    images = generation.real_train_images(tiny_raw())
    fp = fingerprint(params, 1, arrays=[images])
    assert fp == fingerprint(params, 1, arrays=[images.copy()])
    assert fp != fingerprint(params, 2, arrays=[images])
    assert fp != fingerprint(params.model_copy(update=dict(epochs=params.epochs + 1)), 1, arrays=[images])
    assert fp != fingerprint(params, 1, arrays=[images[:-1]])
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert fp != fingerprint(params, 1, arrays=[changed])


# ----------------------------------------------------------------------------- stage generate


def test_generate_stores_jpegs_as_cifake_does(generated):
    with zipfile.ZipFile(generated.generated_jpegs) as zf:
        names = zf.namelist()
        blobs = {name: zf.read(name) for name in names}
    assert names == [f"train/DCGAN/{i:05d}.jpg" for i in range(6)] + [f"test/DCGAN/{i:05d}.jpg" for i in range(4)]
    references = [jpeg_tables_of_pillow_quality_75()]
    if CIFAKE_SMALL.exists():
        with zipfile.ZipFile(CIFAKE_SMALL) as zf:
            real = next(n for n in zf.namelist() if n.endswith(".jpg") and "/REAL/" in n)
            with Image.open(io.BytesIO(zf.read(real))) as im:
                references.append(im.quantization)
                assert JpegImagePlugin.get_sampling(im) == 2
    for data in blobs.values():
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (32, 32))
            assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
            assert all(im.quantization == ref for ref in references)

    for split, count in (("train", 6), ("test", 4)):
        stored = load_arrays(generated.generated_split(split))
        assert list(stored) == ["images"]
        assert stored["images"].dtype == np.uint8 and stored["images"].shape == (count, 32, 32, 3)
        decoded = [np.asarray(Image.open(io.BytesIO(blobs[f"{split}/DCGAN/{i:05d}.jpg"]))) for i in range(count)]
        np.testing.assert_array_equal(stored["images"], np.stack(decoded))  # exactly the stored JPEGs' pixels

    metrics = json.loads((generated.metrics / "generate.json").read_text())
    assert metrics["jpeg"] == {"quality": 75, "subsampling": "4:2:0"}
    assert metrics["train"]["images"] == 6 and metrics["test"]["images"] == 4
    assert metrics["mean_bytes"] == pytest.approx(np.mean([len(b) for b in blobs.values()]))


def test_generate_is_seeded_per_split_and_repeats_byte_for_byte(generated, tmp_path, mlflow_uri):
    paths, args = make_project(tmp_path)
    paths.models.mkdir(exist_ok=True)
    shutil.copy2(generated.model_file("dcgan_generator"), paths.model_file("dcgan_generator"))
    generate.main(paths, args)
    assert paths.generated_jpegs.read_bytes() == generated.generated_jpegs.read_bytes()
    train = load_arrays(paths.generated_split("train"))["images"]
    test = load_arrays(paths.generated_split("test"))["images"]
    assert not np.array_equal(train[:4], test)  # test noise uses base.seed + 1


def test_generate_without_a_generator_says_which_stage_to_run(tmp_path, mlflow_uri):
    paths, args = make_project(tmp_path)
    with pytest.raises(
        RealfakeError, match=r"dcgan_generator\.keras: DCGAN generator not found.*dvc repro train_dcgan"
    ):
        generate.main(paths, args)


def test_generate_refuses_a_generator_of_the_wrong_shape(tmp_path, mlflow_uri):
    paths, args = make_project(tmp_path)
    wrong = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16 * 16 * 3), keras.layers.Reshape((16, 16, 3))])
    paths.models.mkdir(exist_ok=True)
    wrong.save(paths.model_file("dcgan_generator"))
    with pytest.raises(RealfakeError, match=r"dcgan_generator\.keras: expected a generator.*16, 16, 3"):
        generate.main(paths, args)
    paths.model_file("dcgan_generator").write_bytes(b"not a model")
    with pytest.raises(RealfakeError, match=r"not a loadable Keras model.*dvc repro train_dcgan"):
        generate.main(paths, args)


def test_generate_refuses_zero_test_images(tmp_path, mlflow_uri):
    paths, args = make_project(tmp_path, generate={"n_test": 0})
    with pytest.raises(ParamsError, match=r"generate\.n_test: must be greater than 0"):
        load_params(args.params, sections=["generate"])
    with pytest.raises(ParamsError, match=r"generate\.n_test"):
        generate.main(paths, args)  # refused before anything is loaded or written
    assert not paths.generated.exists()
