"""Benchmark: training images/s of recipes' detectors, side by side in one run on this CPU.

    .venv/bin/python benchmarks/recipe_speed.py [--recipes fast-60min fast-robust-60min] [--dtype-policy float32
        mixed_bfloat16] [--images 12800] [--steps 300] [--warmup 10] [--repeats 2] [--archive data/cifake.zip]

Each recipe's first reported model (`report` in recipes/<name>.yaml) is built and trained exactly as its recipe sets
it: params.yaml with the recipe's overrides, the same Batches (shuffle, flips, shifts and the random degradations,
which run in NumPy and Pillow beside the train step) and the same optimizer, on the same N train images of the
archive. Images/s counts the `steps` train steps after `warmup` untimed ones (the first traces). Every (recipe,
policy) pair trains in a fresh process, the pairs take turns `repeats` times, and the figures are medians with
min/max. `--dtype-policy` sets Keras' global dtype policy before the model is built (mixed_bfloat16: bfloat16
compute, float32 weights). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import math
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_throughput import machine, prepare_data  # noqa: E402  (after the path set-up)

log = logging.getLogger("recipe_speed")


def measure(recipe_name: str, policy: str, *, data: Path, warmup: int, steps: int) -> dict:
    """Train the recipe's model for warmup + steps steps under `policy`; images/s over the last `steps`."""
    import keras
    import numpy as np
    from train_throughput import StepTimer

    from realfake.params import BaseParams, load_model_params, load_section, read_yaml
    from realfake.pipeline.recipe_files import apply_overrides, load_recipe
    from realfake.training.classifiers import build_classifier, build_optimizer
    from realfake.training.inputs import Batches
    from realfake.training.optim import compile_classifier
    from realfake.training.seeding import seed_everything

    recipe = load_recipe(REPO, recipe_name)
    raw = apply_overrides(read_yaml(REPO / "params.yaml"), recipe.overrides, where=f"recipes/{recipe_name}.yaml")
    name = recipe.report[0]
    spec = load_model_params(raw["models"][name], f"models.{name}")
    seed = load_section(BaseParams, raw["base"], "base").seed
    keras.mixed_precision.set_global_policy(policy)
    seed_everything(seed)
    labels = np.load(data / "labels.npy")
    n = len(labels) // spec.batch_size * spec.batch_size
    images, labels = np.load(data / "images.npy")[:n], labels[:n]
    model = build_classifier(name, spec, input_shape=images.shape[1:], num_classes=2, seed=seed)
    batches = Batches(images, labels, batch_size=spec.batch_size, seed=seed, shuffle=True, augment=spec.augment,
                      max_shift=spec.max_shift, degrade=spec.degrade)  # fmt: skip
    compile_classifier(
        model,
        optimizer=build_optimizer(spec, steps_per_epoch=batches.steps_per_epoch),
        jit_compile=spec.jit_compile,
        run_eagerly=False,
        label_smoothing=spec.label_smoothing,
    )
    timer = StepTimer(warmup + steps)
    epochs = math.ceil((warmup + steps) / batches.steps_per_epoch)
    model.fit(batches.epochs(0, epochs), epochs=epochs, callbacks=[timer], verbose=0, shuffle=False)
    ends = timer.ends[warmup - 1 :]
    return {
        "model": name,
        "images_per_s": steps * spec.batch_size / (ends[-1] - ends[0]),
        "degradations": [d.kind for d in spec.degrade],
        "batch_size": spec.batch_size,
    }


def run_child(*args, **kwargs) -> dict:
    """`measure` in a fresh interpreter (spawn, not fork: this process has TensorFlow loaded)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, *args, **kwargs).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["fast-60min", "fast-robust-60min"])
    parser.add_argument("--dtype-policy", nargs="+", default=["float32"], choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--archive", type=Path, default=REPO / "data" / "cifake.zip", help="a Kaggle-layout zip")
    parser.add_argument("--images", type=int, default=12800, help="train images sampled from the archive")
    parser.add_argument("--steps", type=int, default=300, help="timed train steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (>= 1: step 1 traces)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all pairs; figures are medians")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    pairs = [(recipe, policy) for recipe in args.recipes for policy in args.dtype_policy]
    runs: dict[str, list[float]] = {f"{r} {p}": [] for r, p in pairs}
    details: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="recipe-speed-") as tmp:
        count = prepare_data(args.archive, args.images, seed=42, out=Path(tmp))
        for round_ in range(args.repeats):
            for recipe, policy in pairs:
                result = run_child(recipe, policy, data=Path(tmp), warmup=args.warmup, steps=args.steps)
                log.info("round %d, %s %s: %.0f images/s", round_ + 1, recipe, policy, result["images_per_s"])
                runs[f"{recipe} {policy}"].append(result["images_per_s"])
                details[f"{recipe} {policy}"] = result
    report = {
        "machine": machine(),
        "images": count,
        "steps": args.steps,
        "results": {
            key: {**details[key], "images_per_s": statistics.median(values), "min": min(values), "max": max(values)}
            for key, values in runs.items()
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
