"""Benchmark: test-time augmentation over whole-pixel shifts, on fast detectors that are already trained.

    .venv/bin/python benchmarks/tta_shifts.py --name fast_detector_s2d_24epochs_b64_shift2_tta
        [--tta-max-shifts 0 1 2] [--models-dir models/benchmarks]
        [--archive ../shared/data/cifake-large.zip | --raw data/raw/cifake.npz] [--output-dir benchmarks/results]

Reads the models that `fast_detector.py --save-models DIR --name NAME` saved (one per seed, each the epoch the
validation split selected) and that run's summary.json. Each model's weights go into the same network built
with `tta_max_shift` = each value given (flip TTA as the run had it): the views averaged are every whole-pixel
shift up to that far of the image and its mirror, (2s+1)^2 x 2 of them. Training is untouched, so its time and
the summary's training minutes still hold.

Every setting is scored on the seed's own validation split (rebuilt from the archive with the run's seed, as the
run carved it) and on the archive's whole test split. The validation accuracy is what chooses a setting; the test
scores, with bootstrap confidence intervals (`evaluate` params), only report it. With shift 0 the rebuilt network
must reproduce the saved model's test accuracy (to 2 images): the script checks it before anything else.

Writes <output-dir>/<name>/tta_shifts.json: per seed and setting the val and test scores and the inference
speed (views scored per second, the whole test split); per setting the mean and spread over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import keras
from fast_detector import DEFAULT_ARCHIVE, REPO, command_line, load_splits, spread  # also puts src/ on sys.path
from sklearn.metrics import roc_auc_score
from train_throughput import machine

from realfake import cifake, evaluation
from realfake.classifiers import build_classifier
from realfake.fileio import load_arrays
from realfake.params import load_model_params, load_params

log = logging.getLogger("tta_shifts")


def timed_p_fake(model: keras.Model, images, *, batch_size: int) -> tuple:
    """P(fake) of every image, and the seconds inference took."""
    start = time.perf_counter()
    p_fake = evaluation.p_fake(evaluation.predict_proba(model, images, batch_size=batch_size))
    return p_fake, time.perf_counter() - start


def accuracy_and_auc(labels, p_fake, *, threshold: float) -> dict:
    predicted = evaluation.binary_predictions(p_fake, threshold=threshold)
    return {
        "accuracy": round(float((predicted == labels).mean()), 5),
        "roc_auc": round(float(roc_auc_score(labels == 1, p_fake)), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the fast_detector.py run (its --name)")
    parser.add_argument("--tta-max-shifts", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models" / "benchmarks")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--raw", type=Path, help="the archive decoded, as the download stage writes it (.npz)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    run = json.loads((args.output_dir / args.name / "summary.json").read_text())
    model_name = run["model_name"]
    saved = {r["seed"]: args.models_dir / args.name / f"{model_name}_seed{r['seed']}.keras" for r in run["runs"]}
    missing = [str(path) for path in saved.values() if not path.exists()]
    if missing:
        raise SystemExit(f"no saved model at {', '.join(missing)}: rerun fast_detector.py with --save-models")
    spec = load_model_params({**run["model"], "tta_max_shift": 0}, f"models.{model_name}")
    params = load_params(args.params, sections=["base", "prepare", "evaluate"])
    if run["train_data"] != {"per_class": "all usable", "stored_augment": []}:
        raise SystemExit(f"{args.name}: trained on {run['train_data']}; this script rebuilds only the default splits")
    ev = params.evaluate
    if args.raw:
        raw = cifake.RawDataset.from_arrays(load_arrays(args.raw))
    else:
        raw = cifake.decode_entries(cifake.read_zip(args.archive), workers=1)  # no fork: the backend is loaded

    results = []
    for recorded in run["runs"]:
        seed = recorded["seed"]
        splits = load_splits(raw, per_class=None, val_fraction=params.prepare.val_fraction, augmentations=(), seed=seed)
        trained = keras.models.load_model(saved[seed], safe_mode=True)
        for max_shift in args.tta_max_shifts:
            model = build_classifier(
                model_name, dataclasses.replace(spec, tta_max_shift=max_shift), input_shape=(32, 32, 3),
                num_classes=2, seed=seed,
            )  # fmt: skip
            model.set_weights(trained.get_weights())  # the TTA layers hold no weights: the same network
            val_p_fake, _ = timed_p_fake(model, splits["val"].images, batch_size=ev.batch_size)
            val = accuracy_and_auc(splits["val"].labels, val_p_fake, threshold=ev.threshold)
            test_p_fake, seconds = timed_p_fake(model, splits["test"].images, batch_size=ev.batch_size)
            report = evaluation.binary_report(
                splits["test"].labels, test_p_fake, threshold=ev.threshold, class_names=splits["test"].class_names,
                n_bootstrap=ev.n_bootstrap, confidence=ev.confidence, seed=seed,
            )  # fmt: skip
            # Up to 2 images may differ: a GPU picks its kernels per compilation, moving a borderline P(fake).
            if max_shift == 0 and abs(report["accuracy"] - recorded["test"]["accuracy"]) * report["n"] > 2.5:
                raise SystemExit(f"seed {seed}: rebuilt network scores {report['accuracy']} on test, the run "
                                 f"recorded {recorded['test']['accuracy']}: not the same model or split")  # fmt: skip
            views = model.get_layer("tta_views").views if max_shift or spec.flip_tta else 1
            results.append({
                "seed": seed, "tta_max_shift": max_shift, "views": views, "val": val,
                "test": {k: report[k] for k in ("n", "accuracy", "accuracy_ci", "roc_auc", "roc_auc_ci")},
                "test_views_per_second": round(views * report["n"] / seconds),
            })  # fmt: skip
            log.info("seed %d, tta_max_shift %d: val %s, test %.4f / AUC %.5f", seed, max_shift, val,
                     report["accuracy"], report["roc_auc"])  # fmt: skip

    per_setting = {
        max_shift: {
            key: spread([r[split][metric] for r in results if r["tta_max_shift"] == max_shift])
            for key, split, metric in [
                ("val_accuracy", "val", "accuracy"),
                ("val_roc_auc", "val", "roc_auc"),
                ("test_accuracy", "test", "accuracy"),
                ("test_roc_auc", "test", "roc_auc"),
            ]
        }  # fmt: skip
        for max_shift in args.tta_max_shifts
    }
    document = {
        "command": command_line("tta_shifts.py"),
        "machine": machine(),
        "trained_by": run["command"],
        "computed_on": f"val: each seed's validation split; test: test split of {run['archive']} (all of it)",
        "chosen_by_val_accuracy": max(per_setting, key=lambda s: per_setting[s]["val_accuracy"]["mean"]),
        "per_setting": per_setting,
        "runs": results,
    }
    (args.output_dir / args.name / "tta_shifts.json").write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(document["per_setting"], indent=1))


if __name__ == "__main__":
    main()
