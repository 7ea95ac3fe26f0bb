"""Stage `robustness`: every binary model on CIFAKE's test split under perturbations applied to real and fake alike.

Scored on a seeded, class-balanced sample of `robustness.max_images` test images (the same images for every
model and perturbation), first unperturbed ("none"), then under each perturbation in params. Accuracy and
ROC-AUC with bootstrap intervals (`evaluate.n_bootstrap`, `evaluate.confidence`, `evaluate.threshold`).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, also inside `dvc exp run --temp` copies

from realfake import evaluation, robustness, stage, tracking  # noqa: E402
from realfake.classifiers import load_model  # noqa: E402
from realfake.errors import DataError, ParamsError  # noqa: E402
from realfake.fileio import atomic_path, write_json  # noqa: E402
from realfake.params import load_params  # noqa: E402
from realfake.plots import heatmap_png  # noqa: E402
from realfake.prepare import Split  # noqa: E402

UNPERTURBED = "none"


def binary_models(params) -> list[str]:
    """Every models.<name> section but the 3-class one."""
    three = params.train_3class.model
    if three not in params.models:
        raise ParamsError(f"train_3class.model: {three!r} is not a models.<name> section ({', '.join(params.models)})")
    return [name for name in params.models if name != three]


def perturbed_sets(test: Split, perturbations, *, seed: int) -> dict[str, object]:
    """{name: uint8 images}: the unperturbed sample first, then each perturbation of it."""
    sets = {UNPERTURBED: test.images}
    for i, perturbation in enumerate(perturbations):
        # Each perturbation draws its own noise stream, independent of the list's order before it.
        sets[perturbation.name] = robustness.perturb(test.images, perturbation, seed=seed + i)
    return sets


def score(model, sample: Split, sets: dict, ev, seed: int) -> dict[str, dict]:
    """{perturbation: n, accuracy, ROC-AUC and their intervals} of one model."""
    scores = {}
    for name, images in sets.items():
        p_fake = evaluation.p_fake(evaluation.predict_proba(model, images, batch_size=ev.batch_size))
        report = evaluation.binary_report(
            sample.labels, p_fake, threshold=ev.threshold, class_names=sample.class_names, n_bootstrap=ev.n_bootstrap,
            confidence=ev.confidence, seed=seed,
        )  # fmt: skip
        scores[name] = {k: report[k] for k in ("n", "accuracy", "accuracy_ci", "roc_auc", "roc_auc_ci")}
    return scores


def mlflow_metrics(scores: dict) -> dict:
    """model.perturbation.{accuracy,roc_auc} (intervals are lists, not metrics)."""
    return {
        model: {name: {"accuracy": s["accuracy"], "roc_auc": s["roc_auc"]} for name, s in by_name.items()}
        for model, by_name in scores.items()
    }


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "evaluate", "models", "train_3class", "robustness"])
    rb, ev, seed = params.robustness, params.evaluate, params.base.seed
    names = binary_models(params)
    files = {name: paths.model_file(name) for name in names}
    for name, path in files.items():  # fail fast, before perturbing anything
        if not path.exists():
            raise DataError(f"{path.relative_to(paths.root)}: model not found; train it with: dvc repro train@{name}")
    logged = {"seed": seed, "robustness": params.raw["robustness"], "evaluate": params.raw["evaluate"], "models": names}
    with tracking.stage_run(
        "robustness", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged
    ):
        test, test_path = stage.load_test_split(paths, image_size=params.base.image_size)
        chosen = robustness.stratified_sample(test.labels, count=rb.max_images, seed=seed)
        sample = Split(test.images[chosen], test.labels[chosen], test.class_names)
        sets = perturbed_sets(sample, rb.perturbations, seed=seed)
        scores = {}
        for name, path in files.items():
            model = load_model(path, rebuild_with=f"dvc repro train@{name}")
            scores[name] = score(model, sample, sets, ev, seed)

        computed_on = f"{len(sample.labels)} images of the CIFAKE test split ({test_path.name}), half real, half fake"
        columns = list(sets)
        metrics = {"computed_on": computed_on, "perturbations": columns, "scores": scores}
        write_json(paths.metrics / "robustness.json", metrics)
        heatmap = paths.plots / "robustness" / "heatmap.png"
        with atomic_path(heatmap) as tmp:
            heatmap_png(*robustness.accuracy_table(scores, columns), "Test accuracy under perturbation", str(tmp))
        with atomic_path(paths.reports / "robustness.md") as tmp:
            tmp.write_text(
                f"# Robustness: binary models under perturbations\n\nComputed on {computed_on}; every perturbation "
                f"is applied alike to real and fake images. Accuracy at P(fake) >= {ev.threshold} and ROC-AUC, "
                f"with {ev.confidence:.0%} bootstrap intervals.\n\n" + robustness.markdown_table(scores, columns)
            )
        tracking.log_metrics(mlflow_metrics(scores))
        tracking.log_artifacts(paths.metrics / "robustness.json", paths.reports / "robustness.md")
        tracking.log_artifacts(heatmap, artifact_path="plots")


if __name__ == "__main__":
    stage.run(main, description=__doc__, root=ROOT)
