"""Shared by stage tests: tiny params files and tiny prepared arrays in a temporary project folder."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import yaml
from cifake_fixture import synthetic_image
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
COPIED = ["stages", "src", "params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def tiny_params(**overrides) -> dict:
    """The repo's params with every size shrunk (1 epoch, tiny batches, transfer models from scratch) and every value a
    test relies on set here, so the tests pass whatever experiment is applied to the workspace's params.yaml."""
    params = YAML(typ="safe", pure=True).load((REPO / "params.yaml").read_text())  # YAML 1.2, as DVC writes it
    params["data"].update(source="archive", archive_sha256=None)
    params["prepare"].update(per_class=20, val_fraction=0.2, augment=["rot90", "hflip"], drop_test_overlap=True)
    params["train"].update(
        run_eagerly=True, monitor="val_accuracy", monitor_mode="max", early_stopping_patience=None, strategy="auto"
    )  # fmt: skip  (eager: tracing EfficientNetV2B3 costs about a minute)
    params["detector"].update(calibration="temperature", operating_fprs=[0.01, 0.05], ood_percentile=99,
                              ood_max_images=200, calibration_bins=15, batch_size=64)  # fmt: skip
    for spec in params["models"].values():
        spec.update(epochs=1, batch_size=16, warmup_epochs=0, max_train_minutes=None, validate_every_steps=None,
                    test_curve=False, degrade=[])  # fmt: skip
        if spec["architecture"] == "fast":
            spec.update(stage_filters=[4, 8], convs_per_stage=1, tta_max_shift=0, flip_tta=True, max_shift=2)
        if "weights" in spec:  # transfer models: an eager step costs seconds whatever the batch: one per epoch
            spec.update(weights=None, batch_size=128)
    params["models"]["fast_robust"]["degrade"] = [
        {"kind": "jpeg", "probability": 0.5, "range": [30, 90]},
        {"kind": "blur", "probability": 0.5, "range": [0.5, 1.0]},
    ]
    for name in ("fast", "fast_robust"):  # the plots of test accuracy against time read both
        params["models"][name]["test_curve"] = True
    params["evaluate"].update(n_bootstrap=50, batch_size=64, threshold=0.5, confidence=0.95, ood_photo_crops=20)
    params["explain"].update(per_cell=2, candidates=400)  # Grad-CAM of 8 images per model, not 16
    params["dcgan"].update(noise_dim=8, dense_filters=8, g_filters=[8, 4], d_filters=[4, 8], epochs=1,
                           batch_size=16, sample_every=1, sample_grid=2, max_images=None, max_train_minutes=None,
                           precision="float32", quality_images=16, quality_model="fast")  # fmt: skip
    params["generate"].update(n_train=40, n_test=20, batch_size=16, jpeg_quality=75, jpeg_subsampling="4:2:0")
    params["train_3class"].update(
        models=["efficientnet_3class", "fast_3class"], val_fraction=0.1, cifake_per_class=None
    )
    params["robustness"].update(max_images=None, perturbations=["jpeg 50", "downscale 2", "blur 1", "noise 5",
                                                                "downscale 2 + jpeg 75"])  # fmt: skip
    for section, values in overrides.items():
        target = params
        *parents, last = section.split(".")
        for key in parents:
            target = target[key]
        target[last] = values if not isinstance(values, dict) else target[last] | values
    return params


def write_params(folder: Path, params: dict) -> argparse.Namespace:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return argparse.Namespace(params=path)


def write_prepared(root: Path, sizes=(("train", 64), ("val", 16), ("test", 24)), seed: int = 0) -> None:
    """data/prepared/{train,val,test}.npz of synthetic images, half real (0) half fake (1)."""
    rng = np.random.default_rng(seed)
    folder = root / "data" / "prepared"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in sizes:
        labels = np.arange(n, dtype=np.uint8) % 2
        images = np.stack([synthetic_image(rng, bool(label)) for label in labels])
        np.savez(folder / f"{name}.npz", images=images, labels=labels, class_names=np.array(["real", "fake"]))


def sh(*cmd, cwd, env, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def copy_repo(work: Path, archive: Path | str) -> dict:
    """A committed git copy of the pipeline's files in `work` with tiny params reading `archive` (a path, or a
    location as params.yaml would give it); returns its env.

    The env puts the venv first on PATH (stages/run.sh falls back to the python on PATH when the copy has no .venv)
    and drops DVC's and MLflow's variables, so the caller decides where runs are logged.
    """
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    # the 3-class retrain draws its own real and SD images from the archive, as the default recipe does
    params = tiny_params(data={"source": "archive", "archive": str(archive)}, train_3class={"cifake_per_class": 12})
    (work / "data").mkdir(exist_ok=True)
    write_params(work, params)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    sh("git", "init", "-q", cwd=work, env=env)
    sh("git", "add", "-A", cwd=work, env=env)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=work, env=env)
    return env


def checker_model() -> keras.Model:
    """A fixed detector of the fixture's fake cue (a 1-pixel checker pattern): mean |2x2 checker filter| response."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(2, 2, use_bias=False, activation="relu")(x)  # +checker and -checker: their ReLUs sum to |.|
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    checker = np.array([[1.0, -1.0], [-1.0, 1.0]])
    kernel = np.zeros((2, 2, 3, 2))
    kernel[..., 0], kernel[..., 1] = checker[..., None], -checker[..., None]
    model.layers[2].set_weights([kernel])
    model.layers[-1].set_weights([np.full((2, 1), 20.0), np.array([-4.0])])  # fake above ~0.2 mean |response|
    return model
