"""The classifier stages: train@<model>, evaluate@<model>, train_3class (run through their main())."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from stage_helpers import REPO, tiny_params, write_params, write_prepared

sys.path.insert(0, str(REPO / "stages"))
import evaluate as evaluate_stage  # noqa: E402
import train as train_stage  # noqa: E402
import train_3class as train_3class_stage  # noqa: E402

from realfake.data.threeclass import three_class_splits  # noqa: E402
from realfake.errors import DataError, ParamsError, WeightsUnavailableError  # noqa: E402
from realfake.models.detector import info_path, load_info  # noqa: E402
from realfake.models.saving import load_model, save_model  # noqa: E402
from realfake.params import load_params  # noqa: E402
from realfake.paths import ProjectPaths  # noqa: E402
from realfake.training import optim  # noqa: E402
from realfake.training.classifiers import build_classifier  # noqa: E402
from realfake.training.state import BACKUP, BACKUP_COMMIT  # noqa: E402


def args_for(tmp_path, model, **overrides):
    args = write_params(tmp_path, tiny_params(**overrides))
    args.model = model
    return args


def only_run(uri, stage):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("realfake")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == stage]
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.parametrize(
    "name", ["cnn", "efficientnet", "resnet50", "efficientnet_3class", "fast", "fast_robust", "fast_3class"]
)
def test_build_every_model_from_params(tmp_path, name):
    params = load_params(write_params(tmp_path, tiny_params()).params)
    classes = 3 if name.endswith("3class") else 2
    model = build_classifier(name, params.models[name], input_shape=(32, 32, 3), num_classes=classes, seed=0)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 1 if name in ("cnn", "fast", "fast_robust") else classes)


def test_repo_fast_model_fits_its_parameter_budget(tmp_path):
    spec = load_params(REPO / "params.yaml", sections=["models.fast"]).models["fast"]
    model = build_classifier("fast", spec, input_shape=(32, 32, 3), num_classes=2, seed=0)
    assert model.count_params() <= spec.max_parameters
    small = spec.model_copy(update=dict(max_parameters=model.count_params() - 1))
    with pytest.raises(ParamsError, match=r"models.fast: the network has [\d,]+ parameters, over models.fast.max_"):
        build_classifier("fast", small, input_shape=(32, 32, 3), num_classes=2, seed=0)
    three = build_classifier("fast", spec, input_shape=(32, 32, 3), num_classes=3, seed=0)  # fast_3class: softmax
    assert three.output_shape == (None, 3) and three.layers[-2].activation.__name__ == "softmax"
    odd_block = spec.model_copy(update=dict(space_to_depth=3))
    with pytest.raises(ParamsError, match="models.fast.space_to_depth: 3 does not divide the 32x32 images"):
        build_classifier("fast", odd_block, input_shape=(32, 32, 3), num_classes=2, seed=0)
    far_shift = spec.model_copy(update=dict(tta_max_shift=32))
    with pytest.raises(ParamsError, match="models.fast.tta_max_shift: 32 px does not fit the 32x32 images"):
        build_classifier("fast", far_shift, input_shape=(32, 32, 3), num_classes=2, seed=0)


def test_cnn_cannot_have_three_classes(tmp_path):
    params = load_params(write_params(tmp_path, tiny_params()).params)
    with pytest.raises(ParamsError, match="models.cnn.architecture: cnn has one sigmoid output"):
        build_classifier("cnn", params.models["cnn"], input_shape=(32, 32, 3), num_classes=3, seed=0)


@pytest.mark.parametrize("name", ["fast", "fast_robust"])  # fast_robust: trained on degraded images too
def test_fast_models_train_through_the_stage_into_calibrated_detectors(tmp_path, mlflow_uri, name):
    write_prepared(tmp_path)
    train_stage.main(ProjectPaths(tmp_path), args_for(tmp_path, name))
    model_file = tmp_path / "models" / f"{name}.keras"
    for out in (model_file, info_path(model_file), tmp_path / f"plots/train/{name}.csv",
                tmp_path / f"metrics/train/{name}.json"):  # fmt: skip
        assert out.is_file(), out
    summary = json.loads((tmp_path / f"metrics/train/{name}.json").read_text())
    assert summary["epochs_run"] == 1 and summary["train_images"] == 64 and not summary["stopped_by_budget"]
    info = load_info(info_path(model_file))
    assert summary["detector"]["temperature"] == pytest.approx(info.temperature) and info.temperature > 0
    assert set(info.operating_points) == set(summary["detector"]["operating_points"])
    assert len(info.operating_points) == len(tiny_params()["detector"]["operating_fprs"])
    model = load_model(model_file, rebuild_with="x")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    # the temperature lives in the saved model: a Calibration layer after the test-time augmentation's mean
    assert [type(layer).__name__ for layer in (layers[0], *layers[-2:])] == ["TTAViews", "TTAMean", "Calibration"]
    assert layers[-1].temperature == pytest.approx(info.temperature)
    # the test curve, when models.<name>.test_curve asks for it: in the history, never among the best metrics
    header = (tmp_path / f"plots/train/{name}.csv").read_text().splitlines()[0].split(",")
    assert ({"test_accuracy", "test_roc_auc"} <= set(header)) is tiny_params()["models"][name]["test_curve"]
    assert not [key for key in summary["best"] if key.startswith("test_")]


def test_saved_model_is_an_inference_artifact_without_optimizer_state(tmp_path):
    params = load_params(write_params(tmp_path, tiny_params()).params)
    model = build_classifier("cnn", params.models["cnn"], input_shape=(32, 32, 3), num_classes=2, seed=0)
    optim.compile_classifier(model, optimizer=keras.optimizers.Adam(), jit_compile=False, run_eagerly=False,
                                label_smoothing=0.0)  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    model.fit(images, np.arange(8) % 2, epochs=1, verbose=0)  # creates the optimizer's slot variables
    optimizer = model.optimizer
    save_model(model, tmp_path / "cnn.keras")
    assert model.optimizer is optimizer and model.compiled  # the caller's model is left as it was
    with zipfile.ZipFile(tmp_path / "cnn.keras") as archive, archive.open("model.weights.h5") as fh:
        assert "optimizer" not in h5py.File(fh)  # only the layers' variables
    assert not json.loads(zipfile.ZipFile(tmp_path / "cnn.keras").read("config.json"))["compile_config"]
    loaded = keras.models.load_model(tmp_path / "cnn.keras")  # compile=True too: nothing to compile, no warning
    assert not loaded.compiled
    np.testing.assert_allclose(loaded.predict_on_batch(images), model.predict_on_batch(images), rtol=1e-6)


def test_train_then_evaluate_write_every_declared_output(tmp_path, mlflow_uri):
    write_prepared(tmp_path)
    paths = ProjectPaths(tmp_path)
    train_stage.main(paths, args_for(tmp_path, "cnn"))
    for out in ("models/cnn.keras", "models/cnn.detector.npz", "plots/train/cnn.csv", "metrics/train/cnn.json"):
        assert (tmp_path / out).is_file(), out
    summary = json.loads((tmp_path / "metrics/train/cnn.json").read_text())
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1 and summary["train_images"] == 64
    # the state folder is cleared after a finished training; its lock file (a sibling) stays, released and empty
    left = list((paths.state / "train").glob("cnn/*"))
    assert [p.suffix for p in left] == [".lock"] and not left[0].read_text(), left
    client, run = only_run(mlflow_uri, "train")
    assert run.info.status == "FINISHED" and "val_accuracy" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
    (version,) = client.search_model_versions("name='realfake-cnn'")  # registered from the stage's run
    assert version.run_id == run.info.run_id
    # the summary: tags of the run (summary.*) and of the registered version (what tests/test_registry.py checks)
    assert float(run.data.tags["summary.best.val_accuracy"]) == pytest.approx(summary["best"]["val_accuracy"])
    assert float(version.tags["best.val_accuracy"]) == pytest.approx(summary["best"]["val_accuracy"], rel=1e-5)

    evaluate_stage.main(paths, args_for(tmp_path, "cnn"))
    report = json.loads((tmp_path / "metrics/evaluate/cnn.json").read_text())
    assert report["n"] == 24 and 0 <= report["accuracy"] <= 1
    assert report["accuracy_ci"][0] <= report["accuracy"] <= report["accuracy_ci"][1]
    assert (tmp_path / "reports/evaluate/cnn.txt").read_text().count("real") >= 1
    roc = json.loads((tmp_path / "plots/evaluate/cnn/roc.json").read_text())
    assert roc[0]["fpr"] == 0 and roc[-1]["tpr"] == 1
    confusion = json.loads((tmp_path / "plots/evaluate/cnn/confusion.json").read_text())
    assert len(confusion) == 24
    reliability = json.loads((tmp_path / "plots/evaluate/cnn/reliability.json").read_text())
    assert reliability and report["calibration"]["temperature"] == pytest.approx(summary["detector"]["temperature"])
    assert set(report["operating_points"]) == set(summary["detector"]["operating_points"])
    assert report["ood"]["cifake_test"]["images"] == 24
    robust = json.loads((tmp_path / "metrics/robustness/cnn.json").read_text())
    perturbations = tiny_params()["robustness"]["perturbations"]
    assert len(robust["scores"]) == 1 + len(perturbations)  # clean, then each perturbation
    assert min(s["accuracy"] for s in robust["scores"].values()) == robust["worst_accuracy"] or len(perturbations) == 0
    # Evaluation used the saved model: its accuracy equals a direct prediction of the reloaded file.
    model = load_model(tmp_path / "models/cnn.keras", rebuild_with="x")
    with np.load(tmp_path / "data/prepared/test.npz") as test:
        direct = ((model.predict(test["images"].astype("float32"), verbose=0)[:, 0] >= 0.5) == test["labels"]).mean()
    assert report["accuracy"] == pytest.approx(direct)


def test_unknown_model_name(tmp_path, mlflow_uri):
    write_prepared(tmp_path)
    with pytest.raises(ParamsError, match=r"no section models.vgg; defined models: cnn, efficientnet"):
        train_stage.main(ProjectPaths(tmp_path), args_for(tmp_path, "vgg"))


def test_prepared_file_with_wrong_shape(tmp_path, mlflow_uri):
    write_prepared(tmp_path)
    bad = tmp_path / "data/prepared/train.npz"
    np.savez(bad, images=np.zeros((4, 28, 28, 3), np.uint8), labels=np.zeros(4, np.uint8),
             class_names=np.array(["real", "fake"]))  # fmt: skip
    with pytest.raises(DataError, match=r"train\.npz: images are uint8 \(4, 28, 28, 3\), expected uint8 .*dvc repro"):
        train_stage.main(ProjectPaths(tmp_path), args_for(tmp_path, "cnn"))
    experiment = MlflowClient(mlflow_uri).get_experiment_by_name("realfake")  # checked before any run is opened
    assert experiment is None or not MlflowClient(mlflow_uri).search_runs([experiment.experiment_id])


def test_imagenet_weights_unreachable(tmp_path, mlflow_uri, monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_prepared(tmp_path)
    args = args_for(tmp_path, "resnet50", **{"models.resnet50": {"weights": "imagenet"}})
    with pytest.raises(WeightsUnavailableError) as info:
        train_stage.main(ProjectPaths(tmp_path), args)
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras" / "models") in message
    assert "dvc exp run -S models.resnet50.weights=null" in message


def test_missing_model_for_evaluation(tmp_path, mlflow_uri):
    write_prepared(tmp_path)
    with pytest.raises(DataError, match=r"cnn\.keras: model file not found; build it with `dvc repro train@cnn`"):
        evaluate_stage.main(ProjectPaths(tmp_path), args_for(tmp_path, "cnn"))


@pytest.mark.slow  # a stage killed and resumed through subprocesses; the fit itself: tests/test_training.py
def test_interrupted_training_resumes_from_next_epoch(tmp_path, mlflow_uri):
    """SIGTERM the real stage script after its first finished epoch; the rerun continues from epoch 2."""
    write_prepared(tmp_path, sizes=(("train", 1200), ("val", 100), ("test", 10)))  # a few seconds per epoch
    args = args_for(tmp_path, "cnn", **{"models.cnn": {"epochs": 4, "batch_size": 32}})
    state = ProjectPaths(tmp_path).state / "train" / "cnn"
    script = REPO / "stages" / "train.py"
    # The script's project root is the folder above its own: run a copy placed in tmp_path/stages.
    (tmp_path / "stages").mkdir()
    shutil.copy2(script, tmp_path / "stages" / "train.py")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "stages" / "train.py"), "--params", str(args.params),
                             "--model", "cnn"], env=os.environ.copy())  # fmt: skip
    backup = f"*/{BACKUP}/{BACKUP_COMMIT}"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list(state.glob(backup)):  # at least one epoch is finished and backed up
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=60) != 0, "the training was expected to be killed mid-run"
    # The signal may land while a later epoch is being backed up: the last committed backup is what counts.
    done = json.loads(next(state.glob(backup)).read_text())["epoch"]
    assert 1 <= done < 4

    train_stage.main(ProjectPaths(tmp_path), args)
    summary = json.loads((tmp_path / "metrics/train/cnn.json").read_text())
    assert summary["resumed_after_epoch"] == done and summary["epochs_run"] == 4
    history = (tmp_path / "plots/train/cnn.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]


def test_three_class_splits_keep_dcgan_validation_apart():
    rng = np.random.default_rng(0)
    from realfake.data.prepare import Split

    binary = Split(rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), np.arange(12, dtype=np.uint8) % 2,
                   ("real", "fake"))  # fmt: skip
    dcgan = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    train, val = three_class_splits(binary, binary, dcgan, val_fraction=0.2, augmentations=("hflip",), seed=1)
    assert train.class_names == ("real", "sd_fake", "dcgan_fake")
    assert train.counts() == {"real": 6, "sd_fake": 6, "dcgan_fake": 16} and val.counts()["dcgan_fake"] == 2
    val_dcgan = {img.tobytes() for img in val.images[val.labels == 2]}
    train_dcgan = {img.tobytes() for img in train.images[train.labels == 2]}
    mirrored = {img[:, ::-1].tobytes() for img in val.images[val.labels == 2]}
    assert not (val_dcgan | mirrored) & train_dcgan


def train_3class_args(tmp_path, model: str):
    args = write_params(tmp_path, tiny_params())
    args.model = model
    return args


def test_train_3class_stage_trains_the_fast_detector_with_three_classes(tmp_path, mlflow_uri):
    write_prepared(tmp_path)
    generated = tmp_path / "data/generated"
    generated.mkdir(parents=True)
    rng = np.random.default_rng(3)
    np.savez(generated / "train.npz", images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
    train_3class_stage.main(ProjectPaths(tmp_path), train_3class_args(tmp_path, "fast_3class"))
    summary = json.loads((tmp_path / "metrics/train/fast_3class.json").read_text())
    assert summary["train_images"] == 64 + 18 * 3  # prepared train + 18 DCGAN train images with rot90, hflip copies
    model = load_model(tmp_path / "models/fast_3class.keras", rebuild_with="x")
    assert model.output_shape == (None, 3)
    _, run = only_run(mlflow_uri, "train_3class")
    assert run.data.tags["images.train.dcgan_fake"] == "54"
    with pytest.raises(ParamsError, match="train_3class.models: 'fast' is not listed"):
        train_3class_stage.main(ProjectPaths(tmp_path), train_3class_args(tmp_path, "fast"))


def test_train_3class_draws_its_real_and_sd_images_from_the_archive(tmp_path, mlflow_uri):
    from test_prepare import make_raw

    from realfake.fileio import save_arrays

    write_prepared(tmp_path)
    paths = ProjectPaths(tmp_path)
    paths.raw_dataset.parent.mkdir(parents=True)
    save_arrays(paths.raw_dataset, **make_raw(n_train=40).arrays())
    generated = tmp_path / "data/generated"
    generated.mkdir(parents=True)
    np.savez(generated / "train.npz", images=np.random.default_rng(3).integers(0, 256, (20, 32, 32, 3), np.uint8))
    args = write_params(tmp_path, tiny_params(train_3class={"cifake_per_class": 25}))
    args.model = "fast_3class"
    train_3class_stage.main(paths, args)
    summary = json.loads((tmp_path / "metrics/train/fast_3class.json").read_text())
    assert summary["train_images"] == 2 * 25 + 18  # no stored copies for any class in this mode
    _, run = only_run(mlflow_uri, "train_3class")
    assert run.data.tags["images.train.real"] == "25" and run.data.tags["archive_sample.FAKE.drawn"] == "25"


def test_train_3class_without_generated_images(tmp_path, mlflow_uri):
    write_prepared(tmp_path)
    with pytest.raises(DataError, match=r"generated/train\.npz: DCGAN images not found.*dvc repro generate"):
        train_3class_stage.main(ProjectPaths(tmp_path), train_3class_args(tmp_path, "efficientnet_3class"))
