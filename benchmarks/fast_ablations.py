"""Ablation: architecture and averaging variants of the robust fast detector, on the validation split only.

    .venv/bin/python benchmarks/fast_ablations.py [--variants baseline se residual highpass ...] [--epochs 4]
        [--recipe fast-robust-60min] [--archive data/cifake.zip] [--output FILE]

Every variant trains the recipe's model (params.yaml with recipes/<recipe>.yaml's overrides) for `--epochs` epochs
(the cosine schedule laid over them) on the same train split (`prepare_splits` with the recipe's `prepare` settings
and `base.seed`, on the archive's train images alone), with the same flips, shifts and random degradations,
and is scored on the validation split, clean and under four fixed perturbations (robustness.perturbations'
"jpeg 50", "downscale 2", "blur 1", "downscale 2 + jpeg 75"), with flip test-time views as validation during
training. The test split is not read. Each variant runs in a fresh process. Prints one JSON document.

  baseline   the recipe's network: space-to-depth, Conv3x3-BatchNorm-ReLU per stage, max pooling, GAP, sigmoid
  se         + squeeze-excitation after every block (global average pool, Dense(c/8, relu), Dense(c, sigmoid))
  residual   every block adds a 1x1-conv-BatchNorm projection of its input before the ReLU
  highpass   a second input: the high-frequency residual (image minus its 3x3 box blur), stacked as 3 more
             channels before space-to-depth
  highpass_residual  both of the two above
  ema        the baseline with an exponential moving average of the weights (momentum 0.999) used at the end
  distill    the baseline trained towards 0.5 x its label + 0.5 x a teacher's P(fake): the mean of the shipped
             fast-60min and fast-robust-60min detectors (flip views) on the clean train image. Both were trained
             on this same train split (seed 42) and chosen on this validation split, so the teacher carries
             what validation selected; it never saw a validation image as a training example.
  curriculum the baseline with the degradation probabilities ramped linearly from 1/half to full over the first
             half of the epochs (epoch e of E: min(1, (e + 1) / ceil(E / 2)) x each probability)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VARIANTS = ("baseline", "se", "residual", "highpass", "highpass_residual", "ema", "distill", "curriculum")
TEACHERS = ("fast-60min", "fast-robust-60min")
PERTURBATIONS = ("jpeg 50", "downscale 2", "blur 1", "downscale 2 + jpeg 75")
log = logging.getLogger("fast_ablations")


def build_variant(variant: str, spec, *, seed: int):
    """The recipe's fast network with the variant's change (flip test-time views; no shifted ones)."""
    import keras
    from keras import layers

    from realfake.models.layers import SpaceToDepth, TTAMean, TTAViews

    inputs = keras.Input(shape=(32, 32, 3))
    views = TTAViews(flip=spec.flip_tta, max_shift=0, name="tta_views")
    x = views(inputs)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(x)
    if variant in ("highpass", "highpass_residual"):
        blurred = layers.AveragePooling2D(3, strides=1, padding="same")(x)
        x = layers.Concatenate()([x, layers.Subtract()([x, blurred])])
    x = SpaceToDepth(spec.space_to_depth)(x)
    for stage, filters in enumerate(spec.stage_filters):
        if stage:
            x = layers.MaxPooling2D(2)(x)
        for _ in range(spec.convs_per_stage):
            block = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))
            if variant in ("residual", "highpass_residual"):
                shortcut = layers.BatchNormalization()(layers.Conv2D(filters, 1, use_bias=False)(x))
                block = layers.Add()([block, shortcut])
            x = layers.ReLU()(block)
            if variant == "se":
                squeeze = layers.GlobalAveragePooling2D(keepdims=True)(x)
                squeeze = layers.Dense(max(8, filters // 8), activation="relu")(squeeze)
                x = layers.Multiply()([x, layers.Dense(filters, activation="sigmoid")(squeeze)])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(spec.dropout, seed=seed)(x)
    x = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, TTAMean(views.views)(x), name=f"fast_{variant}")


def teacher_p_fake(images):
    """The mean P(fake) of the shipped TEACHERS, each rebuilt with flip views only (their shift views cost 9x)."""
    import keras
    import numpy as np

    from realfake.evaluation.scoring import p_fake, predict_proba
    from realfake.models.fast import build_fast
    from realfake.serving.models import shipped_detector

    probabilities = []
    for name in TEACHERS:
        detector = shipped_detector(name)
        trained = keras.saving.load_model(detector.file("keras"), compile=False)
        p = detector.card["params"]
        teacher = build_fast(input_shape=images.shape[1:], stage_filters=p["stage_filters"],
                             convs_per_stage=p["convs_per_stage"], space_to_depth=p["space_to_depth"],
                             dropout=p["dropout"], flip_tta=True, tta_max_shift=0, seed=0)  # fmt: skip
        teacher.set_weights(trained.get_weights())
        probabilities.append(p_fake(predict_proba(teacher, images, batch_size=500)))
    return np.mean(probabilities, axis=0).astype(np.float32)


def curriculum_fit(model, spec, batches, epochs: int) -> None:
    """Fit epoch by epoch, the degradation probabilities scaled up over the first half of the epochs."""
    import dataclasses
    import math

    ramp = math.ceil(epochs / 2)
    for epoch in range(epochs):
        scale = min(1.0, (epoch + 1) / ramp)
        degrade = tuple(dataclasses.replace(d, probability=d.probability * scale) for d in spec.degrade)
        stream = dataclasses.replace(batches, degrade=degrade).epochs(epoch, epoch + 1)
        model.fit(
            stream,
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=batches.steps_per_epoch,
            verbose=2,
            shuffle=False,
        )


def measure(variant: str, *, recipe_name: str, data: str, epochs: int) -> dict:
    """Train one variant and score it on the validation split, clean and perturbed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import numpy as np

    from realfake.data.perturb import Perturbation, perturb
    from realfake.evaluation.scoring import p_fake, predict_proba
    from realfake.params import BaseParams, load_model_params, load_section, read_yaml
    from realfake.pipeline.recipe_files import apply_overrides, load_recipe
    from realfake.training.classifiers import build_optimizer
    from realfake.training.inputs import Batches
    from realfake.training.optim import compile_classifier
    from realfake.training.seeding import seed_everything

    recipe = load_recipe(REPO, recipe_name)
    raw = apply_overrides(read_yaml(REPO / "params.yaml"), recipe.overrides, where=f"recipes/{recipe_name}.yaml")
    name = recipe.report[0]
    spec = load_model_params({**raw["models"][name], "epochs": epochs}, f"models.{name}")
    seed = load_section(BaseParams, raw["base"], "base").seed
    with np.load(data) as arrays:
        train_images, train_labels = arrays["train_images"], arrays["train_labels"]
        val_images, val_labels = arrays["val_images"], arrays["val_labels"]
    seed_everything(seed)
    model = build_variant(variant, spec, seed=seed)
    batches = Batches(train_images, train_labels, batch_size=spec.batch_size, seed=seed, shuffle=True,
                      augment=spec.augment, max_shift=spec.max_shift, degrade=spec.degrade)  # fmt: skip
    optimizer = build_optimizer(spec, steps_per_epoch=batches.steps_per_epoch)
    if variant == "ema":
        optimizer.use_ema, optimizer.ema_momentum, optimizer.ema_overwrite_frequency = True, 0.999, None
    compile_classifier(model, optimizer=optimizer, jit_compile=spec.jit_compile, run_eagerly=False,
                       label_smoothing=spec.label_smoothing)  # fmt: skip
    started = time.perf_counter()
    if variant == "curriculum":
        curriculum_fit(model, spec, batches, epochs)
    elif variant == "distill":
        import tensorflow as tf

        hard = train_labels.astype(np.float32)
        targets = tf.constant(0.5 * hard + 0.5 * teacher_p_fake(train_images))
        # The labels Batches gathers are row indices, so each batch picks up its rows' soft targets.
        indexed = dataclasses.replace(batches, labels=np.arange(len(train_labels)))
        stream = indexed.epochs(0, epochs).map(lambda x, rows: (x, tf.gather(targets, rows)[:, None]))
        model.fit(stream, epochs=epochs, steps_per_epoch=batches.steps_per_epoch, verbose=2, shuffle=False)
    else:
        model.fit(
            batches.epochs(0, epochs), epochs=epochs, steps_per_epoch=batches.steps_per_epoch, verbose=2, shuffle=False
        )
    minutes = (time.perf_counter() - started) / 60

    def accuracy(images):
        return float(np.mean((p_fake(predict_proba(model, images, batch_size=500)) >= 0.5) == val_labels))

    scores = {"clean": accuracy(val_images)}
    for text in PERTURBATIONS:
        scores[text] = accuracy(perturb(val_images, Perturbation.parse(text), seed=seed))
    return {"variant": variant, "parameters": model.count_params(), "train_minutes": minutes,
            "train_images": len(train_labels), "val_images": len(val_labels), "val_accuracy": scores}  # fmt: skip


def split_once(recipe_name: str, archive: Path, out: Path) -> Path:
    """Decode the archive's train images and split them as the recipe's `prepare` says, once for every variant."""
    import numpy as np

    from realfake.data import cifake
    from realfake.data.prepare import prepare_splits
    from realfake.params import BaseParams, PrepareParams, load_section, read_yaml
    from realfake.pipeline.recipe_files import apply_overrides, load_recipe

    recipe = load_recipe(REPO, recipe_name)
    raw = apply_overrides(read_yaml(REPO / "params.yaml"), recipe.overrides, where=f"recipes/{recipe_name}.yaml")
    prep = load_section(PrepareParams, raw["prepare"], "prepare")
    seed = load_section(BaseParams, raw["base"], "base").seed
    entries = [e for e in cifake.read_zip(archive) if cifake.SPLITS[e.split] != "test"]  # test is not read
    splits, _ = prepare_splits(cifake.decode_entries(entries), per_class=prep.per_class,
                               val_fraction=prep.val_fraction, augmentations=prep.augment,
                               drop_test_overlap=False, seed=seed)  # fmt: skip
    path = out / "splits.npz"
    np.savez(path, train_images=splits["train"].images, train_labels=splits["train"].labels,
             val_images=splits["val"].images, val_labels=splits["val"].labels)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--recipe", default="fast-robust-60min")
    parser.add_argument("--archive", default=str(REPO / "data" / "cifake.zip"))
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = []
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="fast-ablations-") as tmp:
        data = split_once(args.recipe, Path(args.archive), Path(tmp))
        for variant in args.variants:
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                result = pool.submit(measure, variant, recipe_name=args.recipe, data=str(data),
                                     epochs=args.epochs).result()  # fmt: skip
            log.info("%s: %s", variant, json.dumps(result))
            results.append(result)
            if args.output:  # after every variant: an interrupted run keeps what it measured
                args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
