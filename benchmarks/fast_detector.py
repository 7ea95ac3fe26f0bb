"""Benchmark: realfake's `fast` detector on a CPU budget: test accuracy against cumulative training time.

    .venv/bin/python benchmarks/fast_detector.py [--seeds 42 1 2] [--epochs N] [--batch-size N] [--per-class N]
        [--set KEY=VALUE ...] [--model NAME] [--stored-augment] [--train-minutes M]
        [--archive ../shared/data/cifake-large.zip | --raw data/raw/cifake.npz] [--output-dir benchmarks/results]
        [--save-models models/benchmarks]

Trains models.fast from params.yaml (`--epochs` overrides its epochs, the schedule laid out over them; `--batch-size`
its batch size; `--set stage_filters=[48,96,192]` any other key of models.fast, the value read as YAML) with the
library's own code path (`classifiers.train_classifier`, the input pipeline from uint8 arrays, resumable fit), once
per seed, on the archive's train images (all of them by default; duplicates and copies of test images dropped as
the prepare stage does; a validation split of `prepare.val_fraction` carved off; no stored augmented copies: the
model flips on the fly). The validation split picks the best epoch, as in the pipeline.

`--model cnn|efficientnet|resnet50` trains another models.<name> section the same way; with `--per-class
25000 --stored-augment` (the prepare stage's per-class sample and stored copies, params.yaml's `prepare`) that is
the seed's full recipe. `--raw` reads the download stage's decoded arrays instead of decoding `--archive`.
`--train-minutes M` ends a run after the last epoch that fits in M training minutes ("as many epochs as fit"),
judged by the length of the epoch just finished; the summary records the epochs run.
`--save-models DIR` keeps each seed's selected model, for re-scoring it later (`benchmarks/tta_shifts.py`).
Under `KERAS_BACKEND=jax` (a GPU machine with JAX and no TensorFlow) the same code trains through JAX; the command
recorded in the summary names the backend.

Reporting only, never selection: after every epoch the model (flip TTA included) scores the archive's whole test
split; those scores go to the accuracy-vs-time curve and to nothing else. Training time is the sum of the epochs'
training parts (validation, the test pass and the one-off data decoding excluded); the first epoch includes
tracing. The selected model's final test scores carry bootstrap confidence intervals (`evaluate` params).

Writes <output-dir>/<name>/summary.json (per seed, and mean/spread over seeds) and curve_seed<S>.csv (one row
per epoch), which dvc.yaml declares as a plot. Long: about (epochs x 2.5 min) per seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))


import keras  # noqa: E402
import yaml  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from train_throughput import machine  # noqa: E402

from realfake import cifake, evaluation  # noqa: E402
from realfake.classifiers import train_classifier  # noqa: E402
from realfake.fileio import load_arrays  # noqa: E402
from realfake.params import ModelParams, load_model_params, load_params  # noqa: E402
from realfake.prepare import Split, prepare_splits, train_pool  # noqa: E402

log = logging.getLogger("fast_detector")
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifake-large.zip"


class TestCurve(keras.callbacks.Callback):
    """After each epoch: the test split's accuracy and AUC (joined to the fit's own history afterwards)."""

    def __init__(self, test: Split, *, batch_size: int, threshold: float):
        super().__init__()
        self.test, self.batch_size, self.threshold = test, batch_size, threshold
        self.scores: dict[int, dict] = {}  # epoch -> test scores

    def on_epoch_end(self, epoch, logs=None):
        p_fake = evaluation.p_fake(evaluation.predict_proba(self.model, self.test.images, batch_size=self.batch_size))
        predicted = evaluation.binary_predictions(p_fake, threshold=self.threshold)
        self.scores[epoch + 1] = {
            "test_accuracy": round(float((predicted == self.test.labels).mean()), 5),
            "test_roc_auc": round(float(roc_auc_score(self.test.labels == 1, p_fake)), 6),
        }
        log.info("epoch %d on test: %s", epoch + 1, self.scores[epoch + 1])

    def rows(self, history: dict[str, list]) -> list[dict]:
        """One row per epoch: cumulative training minutes and val accuracy (the fit's history), test scores."""
        return [
            {"epoch": epoch, "train_minutes": minutes, "val_accuracy": round(float(val), 5), **self.scores[epoch]}
            for epoch, minutes, val in zip(
                history["epoch"], history["train_minutes"], history["val_accuracy"], strict=True
            )
        ]


class TrainingBudget(keras.callbacks.Callback):
    """Stops the fit after the last epoch that fits in `minutes` of training time, predicting the next epoch's
    length from the one just finished. It reads each epoch's `train_seconds` from the logs, as
    `training.fit_classifier`'s own tracker measured them for the summary (training steps only).
    """

    def __init__(self, minutes: float):
        super().__init__()
        self.budget = minutes * 60
        self.spent = 0.0

    def on_epoch_end(self, epoch, logs=None):
        last = logs["train_seconds"]
        self.spent += last
        if self.spent + last > self.budget:
            log.info("training budget: %.1f of %.1f min spent; the next epoch would not fit", self.spent / 60,
                     self.budget / 60)  # fmt: skip
            self.model.stop_training = True


def load_splits(
    raw, *, per_class: int | None, val_fraction: float, augmentations: tuple[str, ...], seed: int
) -> dict[str, Split]:
    if per_class is None:  # every usable train image of the smaller class
        pool, _ = train_pool(raw, drop_test_overlap=True)
        per_class = min(len(indices) for indices in pool.values())
    splits, report = prepare_splits(
        raw, per_class=per_class, val_fraction=val_fraction, augmentations=augmentations, drop_test_overlap=True,
        seed=seed,
    )  # fmt: skip
    log.info("splits: %s", report["sizes"])
    return splits


def run_seed(
    raw, params, name: str, spec, *, seed: int, per_class: int | None, augmentations: tuple[str, ...],
    budget_minutes: float | None, save_to: Path | None,
):  # fmt: skip
    splits = load_splits(
        raw, per_class=per_class, val_fraction=params.prepare.val_fraction, augmentations=augmentations, seed=seed
    )
    ev = params.evaluate
    curve = TestCurve(splits["test"], batch_size=ev.batch_size, threshold=ev.threshold)
    with tempfile.TemporaryDirectory() as state_root:
        result, _ = train_classifier(
            name, spec, params.train, splits["train"], splits["val"], seed=seed, state_root=Path(state_root),
            extra_callbacks=[curve] + ([TrainingBudget(budget_minutes)] if budget_minutes else []),
        )  # fmt: skip
    if save_to:
        save_to.mkdir(parents=True, exist_ok=True)
        result.model.save(save_to / f"{name}_seed{seed}.keras")
    test = splits["test"]
    p_fake = evaluation.p_fake(evaluation.predict_proba(result.model, test.images, batch_size=ev.batch_size))
    report = evaluation.binary_report(
        test.labels, p_fake, threshold=ev.threshold, class_names=test.class_names, n_bootstrap=ev.n_bootstrap,
        confidence=ev.confidence, seed=seed,
    )  # fmt: skip
    summary = {
        "seed": seed,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_minutes": round(result.train_seconds / 60, 2),
        "train_images": len(splits["train"].labels),
        "val_images": len(splits["val"].labels),
        "parameters": int(result.model.count_params()),
        "test": {k: report[k] for k in ("n", "accuracy", "accuracy_ci", "roc_auc", "roc_auc_ci")},
    }
    return summary, [{"seed": seed, **row} for row in curve.rows(result.history)]


def with_overrides(spec: ModelParams, assignments: list[str], *, section: str) -> ModelParams:
    """A models.<name> section with KEY=VALUE assignments applied (values parsed as YAML), validated like
    params.yaml.
    """
    raw = dataclasses.asdict(spec)
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or key not in raw:
            raise SystemExit(f"--set {assignment}: expected KEY=VALUE with KEY one of {', '.join(raw)}")
        raw[key] = yaml.safe_load(value)
    return load_model_params(raw, section)


def earlier_runs(summary: Path, *, setup: dict, replaced: list[int]) -> list[dict]:
    """Runs of other seeds kept from an earlier invocation with the very same setup (model settings, training data,
    backend; seeds can be run one invocation at a time); a summary of another setup is refused rather than mixed in.
    """
    if not summary.exists():
        return []
    earlier = json.loads(summary.read_text())
    if _comparable(json.loads(json.dumps(setup))) != _comparable(earlier):
        raise SystemExit(f"{summary}: holds runs of another model, training data or backend; pass another --name")
    return [run for run in earlier["runs"] if run["seed"] not in replaced]


def _comparable(setup: dict) -> dict:
    # Summaries written before these keys existed trained with space_to_depth 1, scored without test-time shifts,
    # on every usable image with no stored copies, and under TensorFlow unless their machine line names JAX (the
    # first GPU runs).
    model = {"space_to_depth": 1, "tta_max_shift": 0, **setup["model"]}
    backend = "jax" if " on jax " in setup.get("machine", "") else "tensorflow"
    return {
        "model": {k: v for k, v in model.items() if k != "max_parameters"},  # a check on the network, not a setting
        "train_data": setup.get("train_data", {"per_class": "all usable", "stored_augment": []}),
        "backend": setup.get("backend", backend),
        "train_minutes_budget": setup.get("train_minutes_budget"),
    }


def command_line(script: str) -> str:
    """This invocation of benchmarks/<script>, as a command that re-runs it (the backend named where not TensorFlow)."""
    backend = keras.backend.backend()
    interpreter = ".venv/bin/python" if backend == "tensorflow" else f"KERAS_BACKEND={backend} python3"
    return " ".join([interpreter, f"benchmarks/{script}", *sys.argv[1:]])


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 5),
        "std": round(statistics.stdev(values), 5) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--raw", type=Path, help="the archive decoded, as the download stage writes it (.npz)")
    parser.add_argument("--model", default="fast", help="the models.<name> section to train")
    parser.add_argument("--stored-augment", action="store_true", help="add prepare.augment's stored copies")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--epochs", type=int, help="override the model's epochs (the schedule spans them)")
    parser.add_argument("--batch-size", type=int, help="override the model's batch_size")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override a models key (YAML)")
    parser.add_argument("--train-minutes", type=float,
                        help="stop after the last epoch that fits in this much training time")  # fmt: skip
    parser.add_argument("--per-class", type=int, help="train+val images per class; default: all usable")
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="fast_detector", help="folder of the output files in --output-dir")
    parser.add_argument("--save-models", type=Path, metavar="DIR",
                        help="also save each seed's selected model as DIR/<name>/<model>_seed<S>.keras")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    section = f"models.{args.model}"
    params = load_params(args.params, sections=["base", "prepare", "train", "evaluate", section])
    if args.model not in params.models:
        raise SystemExit(f"--model {args.model}: no {section} in {args.params}")
    spec = with_overrides(params.models[args.model], args.set, section=section)
    if args.epochs:
        spec = dataclasses.replace(spec, epochs=args.epochs)
    if args.batch_size:
        spec = dataclasses.replace(spec, batch_size=args.batch_size)
    backend = keras.backend.backend()
    command = command_line("fast_detector.py")
    out = args.output_dir / args.name
    archive_name = (args.raw or args.archive).name
    augmentations = tuple(params.prepare.augment) if args.stored_augment else ()
    setup = {
        "model": dataclasses.asdict(spec),
        "train_minutes_budget": args.train_minutes,
        "train_data": {"per_class": args.per_class or "all usable", "stored_augment": list(augmentations)},
        "backend": backend,
    }
    runs = earlier_runs(out / "summary.json", setup=setup, replaced=args.seeds)
    if args.raw:
        raw = cifake.RawDataset.from_arrays(load_arrays(args.raw))
    else:
        raw = cifake.decode_entries(cifake.read_zip(args.archive), workers=1)  # no fork: the backend is loaded
    for seed in args.seeds:
        summary, curve = run_seed(
            raw, params, args.model, spec, seed=seed, per_class=args.per_class, augmentations=augmentations,
            budget_minutes=args.train_minutes, save_to=args.save_models and args.save_models / args.name,
        )  # fmt: skip
        runs.append({**summary, "command": command, "machine": machine()})
        document = {
            "command": command,  # the latest invocation; each run records its own
            "machine": machine(),
            "archive": archive_name,
            "computed_on": f"test split of {archive_name} (all of it), scored by the saved model (flip TTA included)",
            "model_name": args.model,
            **setup,
            "runs": runs,
            "test_accuracy": spread([r["test"]["accuracy"] for r in runs]),
            "test_roc_auc": spread([r["test"]["roc_auc"] for r in runs]),
            "train_minutes": spread([r["train_minutes"] for r in runs]),
        }
        # rewritten after every seed, so a long run that is stopped keeps what it finished
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(document, indent=1) + "\n")
        with open(out / f"curve_seed{seed}.csv", "w", newline="") as fh:  # one file per seed: one line per seed
            writer = csv.DictWriter(fh, fieldnames=list(curve[0]))
            writer.writeheader()
            writer.writerows(curve)
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
