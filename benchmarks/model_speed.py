"""Benchmark: training images/s of candidate networks on this CPU, with and without XLA (design aid for `fast`).

    .venv/bin/python benchmarks/model_speed.py [--variants cnn fast vgg288 ...] [--batch 256] [--jit 0 1]
        [--dtype-policy float32 mixed_bfloat16]

Each variant trains one epoch of 20,000 random uint8 images (speed does not depend on the pixels) through
`training.inputs.Batches`, after 5 untimed steps; images/s counts steps 5..end. Every (variant, jit) pair runs in a
fresh process so no compiled function or thread pool carries over. Prints one JSON line per measurement.
`--dtype-policy` sets Keras' global dtype policy before the model is built (mixed_bfloat16: bfloat16 compute,
float32 weights; CPUs with AMX run bfloat16 convolutions in hardware).
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
        "jit_compile": jit,
        "dtype_policy": dtype_policy,
        "batch": batch,
        "parameters": int(model.count_params()),
        "images_per_s": round(timed * batch / (ends[-1] - ends[warmup - 1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["cnn", *FAST_VARIANTS])
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
