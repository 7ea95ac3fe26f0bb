"""Stage `cross_evaluate`: every trained classifier on every test source (CIFAKE real, SD fakes, DCGAN fakes), and
for each binary detector how often it at least warns (calls fake or flags out of distribution) on each source."""

from pathlib import Path

import numpy as np

from realfake.data.threeclass import THREE_CLASSES
from realfake.errors import DataError, ParamsError, RealfakeError
from realfake.evaluation import cross as evaluation
from realfake.evaluation import reports
from realfake.evaluation.plots import heatmap_png
from realfake.fileio import atomic_path, load_arrays, write_json
from realfake.models.detector import info_path, load_info
from realfake.models.saving import load_model
from realfake.params import load_params
from realfake.pipeline import stage, tracking


def read_arrays(paths, path: Path, producer: str) -> tuple[dict, str]:
    """The arrays of one test file (its `images` checked to be uint8 RGB), and its path for messages."""
    rel = str(path.relative_to(paths.root))
    if not path.exists():
        raise RealfakeError(f"{rel}: not found; create it with: dvc repro {producer}")
    arrays = load_arrays(path)
    images = arrays.get("images")
    if images is None or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{rel}: expected `images` as uint8 (N, height, width, 3)")
    return arrays, rel


def load_sources(paths) -> dict[str, tuple[str, np.ndarray]]:
    """source name -> (true kind, uint8 images); each source holds one kind and is named after it."""
    cifake, cifake_rel = read_arrays(paths, paths.prepared_split("test"), "prepare")
    dcgan, dcgan_rel = read_arrays(paths, paths.generated_split("test"), "generate")
    if [str(name) for name in cifake.get("class_names", [])] != ["real", "fake"] or "labels" not in cifake:
        raise DataError(f"{cifake_rel}: expected `labels` with class_names [real, fake]")
    sources = {
        "real": (cifake["images"][cifake["labels"] == 0], cifake_rel),
        "sd_fake": (cifake["images"][cifake["labels"] == 1], cifake_rel),
        "dcgan_fake": (dcgan["images"], dcgan_rel),
    }
    for name, (images, rel) in sources.items():
        if len(images) == 0:
            raise DataError(f"{rel}: holds no images for test source {name!r}")
    return {name: (name, images) for name, (images, _) in sources.items()}


def model_files(paths, params) -> dict[str, Path]:
    """Every models.<name> section's saved model, checked to exist; the train_3class.models ones last."""
    three = params.train_3class.models
    for name in three:
        if name not in params.models:
            known = ", ".join(params.models)
            raise ParamsError(f"train_3class.models: {name!r} is not a models.<name> section ({known})")
    names = [name for name in params.models if name not in three] + list(three)
    files = {name: paths.model_file(name) for name in names}
    for name, path in files.items():
        if not path.exists():
            command = f"dvc repro train_3class@{name}" if name in three else f"dvc repro train@{name}"
            raise RealfakeError(f"{path.relative_to(paths.root)}: model not found; train it with: {command}")
    return files


def load_checked_model(path: Path, rel: str, *, n_classes: int, rebuild_with: str):
    """A saved classifier, checked to output P(fake) (binary: 1 or 2 columns) or 3 class probabilities."""
    model = load_model(path, rebuild_with=rebuild_with)
    width = model.output_shape[-1]
    if width not in ((1, 2) if n_classes == 2 else (n_classes,)):
        kind = "binary (1 or 2 outputs)" if n_classes == 2 else f"{n_classes}-class"
        raise DataError(f"{rel}: has {width} outputs but should be {kind}; is train_3class.models right?")
    return model


def mlflow_metrics(scores: dict) -> dict:
    """Scores with each interval as two numbers: MLflow keys like cnn.dcgan_fake.ci_low (lists are no metrics)."""
    return {
        model: {source: s | {"ci_low": s["ci"][0], "ci_high": s["ci"][1]} for source, s in by_source.items()}
        for model, by_source in scores.items()
    }


def score_all(files: dict[str, Path], sources: dict, *, ev, three: tuple[str, ...], root: Path) -> tuple[dict, dict]:
    """({model: {source: score}}, {binary model: {source: warning shares}}), loading one model at a time."""
    scores, warnings = {}, {}
    for name, path in files.items():
        class_names = THREE_CLASSES if name in three else ("real", "fake")
        rebuild = f"dvc repro train_3class@{name}" if name in three else f"dvc repro train@{name}"
        model = load_checked_model(path, str(path.relative_to(root)), n_classes=len(class_names), rebuild_with=rebuild)
        scores[name] = evaluation.cross_evaluate_model(
            model, sources, class_names=class_names, batch_size=ev.batch_size, threshold=ev.threshold,
            confidence=ev.confidence,
        )  # fmt: skip
        if name not in three:
            info = load_info(info_path(path))
            warnings[name] = evaluation.warnings_by_source(
                model, info, sources, batch_size=ev.batch_size, threshold=ev.threshold
            )
    return scores, warnings


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "evaluate", "models", "train_3class"])
    ev, three = params.evaluate, params.train_3class.models
    files = model_files(paths, params)  # fail fast, before a long inference run
    sources = load_sources(paths)
    inputs = [str(p.relative_to(paths.root)) for p in (paths.prepared_split("test"), paths.generated_split("test"))]
    section = {
        "evaluate": {"batch_size": ev.batch_size, "threshold": ev.threshold, "confidence": ev.confidence},
        "train_3class": {"models": list(three)},
        "models": list(files),
    }
    with tracking.stage_run(
        "cross_evaluate", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section
    ):
        scores, warnings = score_all(files, sources, ev=ev, three=three, root=paths.root)
        confusion = {
            name: {
                "labels": list(THREE_CLASSES),
                "matrix": evaluation.confusion_by_kind(scores[name], class_names=THREE_CLASSES),
            }
            for name in three
        }  # rows actual, columns predicted
        metrics = {"threshold": ev.threshold, "confidence": ev.confidence, "scores": scores, "confusion": confusion}
        write_json(paths.metrics / "cross_evaluate.json", metrics | {"unseen_generator": warnings})
        heatmap = paths.plots / "cross_evaluate" / "heatmap.png"
        with atomic_path(heatmap) as tmp:
            heatmap_png(*evaluation.cross_evaluation_matrix(scores), "Share correct per test source", str(tmp))
        text = reports.cross_evaluation_text(
            scores, confusion, warnings, threshold=ev.threshold, confidence=ev.confidence, files=inputs
        )
        with atomic_path(paths.reports / "cross_evaluate.md") as tmp:
            tmp.write_text(text)
        tracking.log_metrics(mlflow_metrics(scores) | {"unseen_generator": warnings})
        tracking.log_artifacts(paths.metrics / "cross_evaluate.json", paths.reports / "cross_evaluate.md")
        tracking.log_artifacts(heatmap, artifact_path="plots")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
