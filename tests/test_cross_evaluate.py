"""Stage cross_evaluate: tiny fixed-weight models on constant-colour images, so every prediction is known."""

import importlib.util
import json
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from realfake.errors import DataError, ParamsError, RealfakeError
from realfake.evaluation.cross import wilson_interval
from realfake.models.detector import save_info
from realfake.paths import ProjectPaths

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cross_evaluate_stage", REPO / "stages" / "cross_evaluate.py")
stage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage)

# Constant-colour images. The models see their mean colour (r, g, b) and decide:
#   cnn           sigmoid, fake iff r+g+b >= 382.5       efficientnet  2-way softmax, fake iff r+g+b >= 250
#   cnn_b         sigmoid, always fake (bias +100)       3class        argmax channel: r real, g sd_fake, b dcgan
REAL = [(120, 20, 10), (250, 90, 60), (30, 200, 10), (5, 10, 240)]  # sums 150, 400, 240, 255
SD = [(10, 250, 200), (40, 220, 20), (230, 100, 100)]  # sums 460, 280, 430
DCGAN = [(0, 0, 245), (150, 150, 200)]  # sums 245, 500
# (n_correct, n) by hand from the rules above
EXPECTED = {
    "cnn": {"real": (3, 4), "sd_fake": (2, 3), "dcgan_fake": (1, 2)},  # wrong: 400; 280; 245
    "efficientnet": {"real": (2, 4), "sd_fake": (3, 3), "dcgan_fake": (1, 2)},  # wrong: 400, 255; -; 245
    "cnn_b": {"real": (0, 4), "sd_fake": (3, 3), "dcgan_fake": (2, 2)},
    "efficientnet_3class": {"real": (2, 4), "sd_fake": (2, 3), "dcgan_fake": (2, 2)},
}
# 3-class predictions per source, columns real / sd_fake / dcgan_fake (rows actual, as the confusion matrix)
CONFUSION_3CLASS = [[2, 1, 1], [1, 2, 0], [0, 0, 2]]
# Every binary model's out-of-distribution statistics: one mean at 0 and a precision that reads the blue channel only,
# so the OOD score is b squared and the cutoff flags an image iff its blue mean is above 235: REAL (5, 10, 240) and
# DCGAN (0, 0, 245). Shares (called fake, flagged OOD, either) by hand:
OOD_BLUE_CUTOFF = 235.0
EXPECTED_WARNINGS = {
    "cnn": {"real": (1 / 4, 1 / 4, 2 / 4), "sd_fake": (2 / 3, 0, 2 / 3), "dcgan_fake": (1 / 2, 1 / 2, 1.0)},
    "cnn_b": {"real": (1.0, 1 / 4, 1.0), "sd_fake": (1.0, 0, 1.0), "dcgan_fake": (1.0, 1 / 2, 1.0)},
}


def constant_images(colours):
    return np.stack([np.broadcast_to(np.array(c, np.uint8), (32, 32, 3)) for c in colours]).copy()


def tiny_model(units, activation, kernel, bias):
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(32, 32, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(units, activation=activation),
        ]
    )
    model.layers[-1].set_weights([np.array(kernel, np.float32), np.array(bias, np.float32)])
    return model


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved_models")
    models = {
        "cnn": tiny_model(1, "sigmoid", [[0.01]] * 3, [-3.825]),
        "efficientnet": tiny_model(2, "softmax", [[0.0, 0.01]] * 3, [0.0, -2.5]),
        "cnn_b": tiny_model(1, "sigmoid", [[0.0]] * 3, [100.0]),
        "efficientnet_3class": tiny_model(3, "softmax", np.eye(3) * 0.01, [0.0, 0.0, 0.0]),
    }
    for name, model in models.items():
        model.save(folder / f"{name}.keras")
        if name != "efficientnet_3class":
            save_info(folder / f"{name}.detector.npz", blue_ood_info())
    return folder


def blue_ood_info():
    from realfake.models.detector import DetectorInfo

    return DetectorInfo(
        temperature=1.0, operating_points={}, ood_means=np.zeros((1, 3), np.float32),
        ood_precision=np.diag([0.0, 0.0, 1.0]).astype(np.float32), ood_cutoff=OOD_BLUE_CUTOFF**2, ood_percentile=99,
        fitted_on={},
    )  # fmt: skip


def write_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


@pytest.fixture
def project(tmp_path, saved_models, mlflow_uri):
    """A project folder with the models, both test files and params naming cnn, efficientnet, cnn_b, 3-class."""
    paths = ProjectPaths(tmp_path)
    shutil.copytree(saved_models, paths.models)
    # Interleave labels so the stage must split by label, not by position.
    images = constant_images([REAL[0], SD[0], REAL[1], SD[1], REAL[2], SD[2], REAL[3]])
    labels = np.array([0, 1, 0, 1, 0, 1, 0], np.uint8)
    write_npz(paths.prepared_split("test"), images=images, labels=labels, class_names=np.array(["real", "fake"]))
    write_npz(paths.generated_split("test"), images=constant_images(DCGAN))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    models = params["models"]
    params["models"] = {
        "cnn": models["cnn"],
        "efficientnet": models["efficientnet"],
        "cnn_b": models["cnn"],  # a new matrix entry: picked up from params alone
        "efficientnet_3class": models["efficientnet_3class"],
    }
    params["evaluate"].update(batch_size=3, threshold=0.5, confidence=0.95)  # 3: several batches per source
    params["train_3class"]["models"] = ["efficientnet_3class"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return paths


def run(paths):
    stage.main(paths, Namespace(params=paths.root / "params.yaml"))


def test_table_matches_hand_computed_counts(project, mlflow_uri):
    run(project)
    result = json.loads((project.metrics / "cross_evaluate.json").read_text())
    scores = result["scores"]
    assert list(scores) == ["cnn", "efficientnet", "cnn_b", "efficientnet_3class"]  # 3-class model last
    for model, by_source in EXPECTED.items():
        assert list(scores[model]) == ["real", "sd_fake", "dcgan_fake"]
        for source, (k, n) in by_source.items():
            score = scores[model][source]
            assert (score["n_correct"], score["n"]) == (k, n), (model, source)
            assert score["share_correct"] == pytest.approx(k / n)
            assert score["ci"] == pytest.approx(list(wilson_interval(k, n, confidence=0.95)))
    three = scores["efficientnet_3class"]
    assert three["real"]["predicted_counts"] == {"real": 2, "sd_fake": 1, "dcgan_fake": 1}
    assert three["sd_fake"]["predicted_counts"] == {"real": 1, "sd_fake": 2, "dcgan_fake": 0}
    assert three["dcgan_fake"]["predicted_counts"] == {"real": 0, "sd_fake": 0, "dcgan_fake": 2}
    assert result["confusion"] == {
        "efficientnet_3class": {"labels": ["real", "sd_fake", "dcgan_fake"], "matrix": CONFUSION_3CLASS}
    }
    assert scores["cnn"]["dcgan_fake"]["predicted_counts"] == {"real": 1, "fake": 1}
    warnings = result["unseen_generator"]
    assert list(warnings) == ["cnn", "efficientnet", "cnn_b"]  # binary models only
    for model, by_source in EXPECTED_WARNINGS.items():
        for source, (fake, ood, either) in by_source.items():
            got = warnings[model][source]
            assert (got["share_called_fake"], got["share_flagged_ood"], got["share_fake_or_ood"]) == pytest.approx(
                (fake, ood, either)
            ), (model, source)

    md = (project.reports / "cross_evaluate.md").read_text()
    assert "| model | real | sd_fake | dcgan_fake |" in md
    assert "| cnn | 0.750 [" in md and "(n=4)" in md
    assert "| actual real | 2 | 1 | 1 |" in md
    assert "CIFAKE's test split" in md and "DCGAN's test fakes" in md
    assert '"Correct" for a binary model (cnn, efficientnet, cnn_b)' in md
    assert "| cnn | 0.500 (0.250) | 0.667 (0.000) | 1.000 (0.500) |" in md  # the unseen-generator table
    with Image.open(project.plots / "cross_evaluate" / "heatmap.png") as png:
        assert png.format == "PNG" and png.size[0] > 100


def test_mlflow_run_has_flat_metrics_and_artifacts(project, mlflow_uri):
    run(project)
    client = MlflowClient(mlflow_uri)
    (found,) = client.search_runs(
        [client.get_experiment_by_name("realfake").experiment_id], "tags.stage = 'cross_evaluate'"
    )
    assert found.info.status == "FINISHED"
    metrics = found.data.metrics
    assert metrics["cnn.dcgan_fake.share_correct"] == pytest.approx(0.5)
    assert metrics["efficientnet.real.n_correct"] == 2
    assert metrics["cnn_b.real.share_correct"] == 0.0
    assert metrics["efficientnet_3class.sd_fake.predicted_counts.real"] == 1
    lo, hi = wilson_interval(1, 2, confidence=0.95)
    assert metrics["cnn.dcgan_fake.ci_low"] == pytest.approx(lo)
    assert metrics["cnn.dcgan_fake.ci_high"] == pytest.approx(hi)
    assert found.data.params["evaluate.batch_size"] == "3"
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"cross_evaluate.json", "cross_evaluate.md", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(found.info.run_id, "plots")] == ["plots/heatmap.png"]


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("efficientnet", "dvc repro train@efficientnet"),
        ("efficientnet_3class", "dvc repro train_3class@efficientnet_3class"),
    ],
)
def test_missing_model_names_file_and_command(project, name, command):
    (project.models / f"{name}.keras").unlink()
    with pytest.raises(RealfakeError, match=f"models/{name}.keras: model not found.*{command}"):
        run(project)
    assert not (project.metrics / "cross_evaluate.json").exists()


def test_missing_generated_file_names_its_stage(project):
    project.generated_split("test").unlink()
    with pytest.raises(RealfakeError, match="data/generated/test.npz: not found.*dvc repro generate"):
        run(project)


def test_empty_sources_name_their_file(project):
    write_npz(project.generated_split("test"), images=np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="data/generated/test.npz: holds no images for test source 'dcgan_fake'"):
        run(project)
    write_npz(project.generated_split("test"), images=constant_images(DCGAN))
    only_real = constant_images(REAL)
    write_npz(
        project.prepared_split("test"),
        images=only_real,
        labels=np.zeros(len(REAL), np.uint8),
        class_names=np.array(["real", "fake"]),
    )
    with pytest.raises(DataError, match="data/prepared/test.npz: holds no images for test source 'sd_fake'"):
        run(project)


def test_scaled_images_are_refused(project):
    write_npz(project.generated_split("test"), images=constant_images(DCGAN).astype(np.float32) / 255)
    with pytest.raises(DataError, match="data/generated/test.npz: expected `images` as uint8"):
        run(project)


def test_three_class_model_must_have_three_outputs(project):
    shutil.copy(project.models / "cnn.keras", project.models / "efficientnet_3class.keras")
    with pytest.raises(DataError, match="efficientnet_3class.keras: has 1 outputs but should be 3-class"):
        run(project)


def test_three_class_model_must_be_a_models_section(project):
    params_file = project.root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train_3class"]["models"] = ["nope"]
    params_file.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="train_3class.models: 'nope'"):
        run(project)


def test_confusion_by_kind_sums_sources_of_one_kind():
    from realfake.evaluation.cross import confusion_by_kind
    from realfake.evaluation.reports import confusion_table

    names = ["real", "sd_fake", "dcgan_fake"]
    scores = {
        "dcgan_a": {"true_kind": "dcgan_fake", "predicted_counts": {"real": 1, "sd_fake": 0, "dcgan_fake": 4}},
        "dcgan_b": {"true_kind": "dcgan_fake", "predicted_counts": {"real": 0, "sd_fake": 2, "dcgan_fake": 3}},
        "real": {"true_kind": "real", "predicted_counts": {"real": 5, "sd_fake": 1, "dcgan_fake": 0}},
    }
    matrix = confusion_by_kind(scores, class_names=names)
    assert matrix == [[5, 1, 0], [0, 0, 0], [1, 2, 7]]  # no sd_fake source: a row of zeros
    assert "| actual dcgan_fake | 1 | 2 | 7 |" in confusion_table(matrix, names)
    with pytest.raises(ValueError, match="not one of the classes"):
        confusion_by_kind(scores, class_names=["real", "fake"])
