"""Benchmark: training images/s of candidate networks on this CPU, with and without XLA (design aid for `fast`).

    .venv/bin/python benchmarks/model_speed.py [--variants cnn fast fast_nchw vgg288 ...] [--batch 256] [--jit 0 1]
        [--dtype-policy float32 mixed_bfloat16]
    KERAS_BACKEND=jax PYTHONPATH=<dir with jax> .venv/bin/python benchmarks/model_speed.py --variants fast --jit 1

Each variant trains one epoch of 20,000 random uint8 images (speed does not depend on the pixels) through
`training.inputs.Batches`, after 5 untimed steps; images/s counts steps 5..end. Every (variant, jit) pair runs in a
fresh process so no compiled function or thread pool carries over. Prints one JSON line per measurement.
`--dtype-policy` sets Keras' global dtype policy before the model is built (mixed_bfloat16: bfloat16 compute,
float32 weights; CPUs with AMX run bfloat16 convolutions in hardware). `fast_nchw` is `fast` with its convolutions,
pooling and BatchNorm in the channels-first layout (the same layers and parameter count; the activations are
transposed once after space-to-depth), to measure the layout alone. The Keras backend is the environment's
(`KERAS_BACKEND`); each line names it. Under JAX `--jit 0` would run eagerly, so only `--jit 1` is meaningful there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> factory settings; "cnn" is the reference study's baseline, the rest are `build_fast` widths
FAST_VARIANTS = {
    "fast": {"stage_filters": (64, 128, 256), "convs_per_stage": 1, "space_to_depth": 2},  # params.yaml's choice
    "s2d_48_96_192": {"stage_filters": (48, 96, 192), "convs_per_stage": 1, "space_to_depth": 2},  # 10-min schedule
    "s2d_80_160_320": {"stage_filters": (80, 160, 320), "convs_per_stage": 1, "space_to_depth": 2},
    "s2d_96_192_384": {"stage_filters": (96, 192, 384), "convs_per_stage": 1, "space_to_depth": 2},
    "fullres_32_64_128": {"stage_filters": (32, 64, 128), "convs_per_stage": 1, "space_to_depth": 1},  # first design
    "vgg288": {"stage_filters": (32, 64, 128), "convs_per_stage": 2, "space_to_depth": 1},  # a 288k-parameter VGG
    "vgg_16_64_128x2": {"stage_filters": (16, 64, 128), "convs_per_stage": 2, "space_to_depth": 1},
    "vgg_24_48_96x2": {"stage_filters": (24, 48, 96), "convs_per_stage": 2, "space_to_depth": 1},
    "vgg4stage": {"stage_filters": (32, 64, 128, 256), "convs_per_stage": 1, "space_to_depth": 1},
}


def build_fast_channels_first(*, stage_filters, seed: int):
    """`fast` (no TTA) with every layer after space-to-depth in the channels-first layout: the layout's cost alone."""
    import keras
    from keras import layers

    from realfake.models.layers import SpaceToDepth

    first = "channels_first"
    body = [layers.Rescaling(1.0 / 127.5, offset=-1.0), SpaceToDepth(2), layers.Permute((3, 1, 2))]
    for stage, filters in enumerate(stage_filters):
        if stage:
            body.append(layers.MaxPooling2D(2, data_format=first))
        body += [layers.Conv2D(filters, 3, padding="same", use_bias=False, data_format=first),
                 layers.BatchNormalization(axis=1), layers.ReLU()]  # fmt: skip
    head = [layers.GlobalAveragePooling2D(data_format=first), layers.Dropout(0.1, seed=seed),
            layers.Dense(1, activation="sigmoid")]  # fmt: skip
    return keras.Sequential([keras.Input(shape=(32, 32, 3)), *body, *head], name="fast_nchw")


def measure(variant: str, *, jit: bool, batch: int, dtype_policy: str, images: int = 20000, warmup: int = 5) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import keras
    import numpy as np
    from train_throughput import StepTimer

    from realfake.models.cnn import build_cnn
    from realfake.models.fast import build_fast
    from realfake.training.inputs import Batches
    from realfake.training.optim import compile_classifier
    from realfake.training.seeding import seed_everything

    seed_everything(0)
    keras.mixed_precision.set_global_policy(dtype_policy)
    if variant == "cnn":
        model = build_cnn(input_shape=(32, 32, 3), conv_filters=(32, 64), kernel_size=3, pool_size=2,
                                 dense_units=64)  # fmt: skip
    elif variant == "fast_nchw":
        model = build_fast_channels_first(stage_filters=FAST_VARIANTS["fast"]["stage_filters"], seed=0)
    else:
        model = build_fast(input_shape=(32, 32, 3), dropout=0.1, flip_tta=False, tta_max_shift=0, seed=0,
                                  **FAST_VARIANTS[variant])  # fmt: skip
    compile_classifier(model, optimizer=keras.optimizers.Adam(), jit_compile=jit, run_eagerly=False,
                                label_smoothing=0.0)  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 2, images)
    timer = StepTimer(math.ceil(images / batch))  # the whole epoch
    dataset = Batches(x, y, batch_size=batch, seed=0, shuffle=True).epochs(0, 1)
    model.fit(dataset, epochs=1, verbose=0, callbacks=[timer])
    ends = timer.ends
    timed = len(ends) - warmup
    return {
        "variant": variant,
        "backend": keras.backend.backend(),
        "jit_compile": jit,
        "dtype_policy": dtype_policy,
        "batch": batch,
        "parameters": int(model.count_params()),
        "images_per_s": round(timed * batch / (ends[-1] - ends[warmup - 1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["cnn", *FAST_VARIANTS, "fast_nchw"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--jit", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--dtype-policy", nargs="+", default=["float32"], choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "JIT", "POLICY"), help=argparse.SUPPRESS)  # child
    args = parser.parse_args()
    if args.one:
        variant, jit, policy = args.one
        print(json.dumps(measure(variant, jit=bool(int(jit)), batch=args.batch, dtype_policy=policy)))
        return
    for variant in args.variants:
        for jit in args.jit:
            for policy in args.dtype_policy:
                child = [sys.executable, __file__, "--batch", str(args.batch), "--one", variant, str(jit), policy]
                out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
