"""Benchmark: training images/s of realfake's input path against two baselines, per classifier, on this CPU.

    .venv/bin/python benchmarks/train_throughput.py [--models cnn efficientnet resnet50] [--images 20000]
        [--steps 50] [--warmup 3] [--repeats 3] [--archive data/cifake.zip] [--output FILE]

Every path trains the same model (params.yaml `models.<name>`, `weights` forced to null: nothing is
downloaded, and a backbone's speed does not depend on its initial weights) with the same batch size on the
same N train images of the archive (half REAL, half FAKE, sampled with `base.seed`):

  realfake   uint8 arrays in memory -> training.inputs.Batches(shuffle=True).epochs() -> model.fit
  plain      model.fit(x_float32, y, batch_size=...) on an in-memory float32 copy of the same images
  reference_jpeg  the original notebooks' ImageDataGenerator.flow_from_dataframe: every batch opens its JPEG files
             from disk again (see ReferenceJpegBatches)

Images/s = steps x batch / seconds from the end of step `warmup` to the end of step `warmup + steps`, so the
first step (tracing the train function) and the pipelines' start-up are excluded. N is rounded down to a
multiple of the batch size so every timed step holds a full batch. Each measurement runs in a fresh spawned
process: its peak RSS (getrusage) is its own and no thread pool or cache carries over; with --repeats R the
paths take turns R times and the figures are medians with min/max. Prints one JSON document.
The peak RSS of the whole train stage is not measured here: run `dvc repro` under `/usr/bin/time -v` for that.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

# Set before TensorFlow loads, here and in every spawned child (they inherit the environment).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from realfake.data import cifake  # noqa: E402
from realfake.params import ModelParams, load_params  # noqa: E402
from realfake.training.classifiers import build_classifier, build_optimizer  # noqa: E402
from realfake.training.inputs import Batches  # noqa: E402
from realfake.training.optim import compile_classifier  # noqa: E402
from realfake.training.seeding import seed_everything  # noqa: E402

log = logging.getLogger("train_throughput")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO / "data" / "cifake.zip"  # the pipeline's own local copy (git-ignored)
PATHS = ("realfake", "plain", "reference_jpeg")


# ----------------------------------------------------------------------------- the reference study's input path


class ReferenceJpegBatches(keras.utils.PyDataset):
    """What `ImageDataGenerator(rescale=1/255).flow_from_dataframe(df, target_size=(32, 32))` fed to fit().

    The reference study's notebooks read their JPEG files from disk again for every batch of every epoch this way.
    ImageDataGenerator is gone from Keras 3 (and tf_keras is not a dependency), so this re-creates its
    iterator step for step: a fresh image order each epoch (its default shuffle=True); per batch a zeroed
    float32 array, then per image `keras.utils.load_img` (what the generator called: open the file, Pillow
    decode, convert to RGB; no resize, the files are 32x32 already) and `img_to_array` into that array.
    PyDataset's defaults, workers=1 and no multiprocessing, are fit()'s defaults the notebooks ran with;
    Keras 3 then loads batches in a tf.data thread ahead of the train step (tf.keras 2 prefetched one).

    Three choices, each in the baseline's favour: the reference study's `rescale` multiply is left out, because our
    models rescale inside (Rescaling / backbone preprocessing) and must get 0..255; no random rotation or flip
    is applied (the notebooks' generator did, per image, with scipy), to match `augment=()` on the realfake
    path; and the files were just written, so they are read from the page cache, not the disk.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, *, batch_size: int, image_size: int, seed: int):
        super().__init__()  # workers=1, use_multiprocessing=False
        self.paths, self.labels, self.batch_size, self.image_size = paths, labels, batch_size, image_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(paths))

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        size = (self.image_size, self.image_size)
        batch = np.zeros((len(chosen), *size, 3), dtype=np.float32)
        for row, i in enumerate(chosen):
            image = keras.utils.load_img(self.paths[i], target_size=size, interpolation="nearest")
            batch[row] = keras.utils.img_to_array(image, dtype="float32")
            image.close()
        return batch, self.labels[chosen]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.paths))


# ----------------------------------------------------------------------------- one measurement (child)


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time at the end of every train step; stops fit() once `total` steps are done."""

    def __init__(self, total: int):
        super().__init__()
        self.total, self.begin, self.ends = total, 0.0, []

    def on_train_begin(self, logs=None):
        self.begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # reading the loss waits for the step, so the timestamp follows its end
        self.ends.append(time.perf_counter())
        if len(self.ends) >= self.total:
            self.model.stop_training = True


def measure(
    path: str,
    name: str,
    spec: ModelParams,
    *,
    data: Path,
    image_size: int,
    seed: int,
    warmup: int,
    steps: int,
) -> dict:
    """Train models.<name> on one input path for warmup + steps steps; images/s over the last `steps`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    seed_everything(seed)
    model = build_classifier(name, spec, input_shape=(image_size, image_size, 3), num_classes=2, seed=seed)
    batch = spec.batch_size
    labels = np.load(data / "labels.npy")
    n = len(labels) // batch * batch  # whole batches only: every timed step holds `batch` images
    labels = labels[:n]
    optimizer = build_optimizer(spec, steps_per_epoch=n // batch)
    compile_classifier(
        model,
        optimizer=optimizer,
        jit_compile=spec.jit_compile,
        run_eagerly=False,
        label_smoothing=spec.label_smoothing,
    )
    if path == "realfake":
        images = np.load(data / "images.npy")[:n]
        x = Batches(images, labels, batch_size=batch, seed=seed, shuffle=True).epochs(0, 1)
        y, fit_args = None, {"shuffle": False}  # the dataset shuffles itself; False silences a warning
    elif path == "plain":
        x, y, fit_args = np.load(data / "images.npy")[:n].astype(np.float32), labels, {"batch_size": batch}
    else:
        files = (data / "files.txt").read_text().splitlines()[:n]
        x, y = ReferenceJpegBatches(files, labels, batch_size=batch, image_size=image_size, seed=seed), None
        fit_args = {"shuffle": False}  # the generator reshuffles images itself, as ImageDataGenerator did
    timer = StepTimer(warmup + steps)
    epochs = math.ceil((warmup + steps) / (n // batch))  # the timer stops fit() after the last timed step
    log.info("%s / %s: %d images, %d + %d steps of %d", name, path, n, warmup, steps, batch)
    model.fit(x, y, epochs=epochs, callbacks=[timer], verbose=0, **fit_args)
    ends = timer.ends[warmup - 1 :]
    return {
        "images_per_s": steps * batch / (ends[-1] - ends[0]),
        "input_only_images_per_s": input_only_speed(x, steps=steps, batch=batch),
        "step_s_median": float(np.median(np.diff(ends))),
        "first_step_s": timer.ends[0] - timer.begin,  # tracing included; not part of images_per_s
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "images": n,
    }


def input_only_speed(x, *, steps: int, batch: int) -> float | None:
    """Images/s of the input path alone (no model): the ceiling it puts on training; None for `plain`."""
    if isinstance(x, ReferenceJpegBatches):
        t = time.perf_counter()
        for i in range(steps):
            x[i % len(x)]
        return steps * batch / (time.perf_counter() - t)
    if isinstance(x, np.ndarray):  # fit() slices it inside Keras; nothing to time on its own
        return None
    iterator = iter(x.repeat())
    next(iterator)  # start-up (thread pools, shuffle buffer) excluded, as in fit's warm-up
    t = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- data and report (parent)


def prepare_data(archive: Path, count: int, *, seed: int, out: Path) -> int:
    """Sample `count` train images (half per class), save them as uint8 arrays and as their original JPEGs."""
    entries = [e for e in cifake.read_zip(archive) if cifake.SPLITS[e.split] == "train"]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(cifake.CLASSES)):
        pool = [e for e in entries if e.label == label]
        if len(pool) < count // 2:
            folder = f"train/{cifake.CLASSES[label]}"
            raise SystemExit(f"{archive}: only {len(pool)} images in {folder}, need {count // 2}")
        chosen += [pool[i] for i in rng.choice(len(pool), count // 2, replace=False)]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]  # mixed, so trimming to whole batches is fair
    raw = cifake.decode_entries(chosen, workers=1)  # no fork: TensorFlow is loaded in this process
    np.save(out / "images.npy", raw.images)
    np.save(out / "labels.npy", raw.label.astype(np.int32))  # 0 = real, 1 = fake, as everywhere in realfake
    files = []
    for entry in chosen:  # the archive's own bytes: the very files the notebooks read from Kaggle's folders
        path = out / "jpeg" / entry.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.read())
        files.append(str(path))
    (out / "files.txt").write_text("\n".join(files) + "\n")
    return len(chosen)


def run_child(*args, **kwargs) -> dict:
    """`measure` in a fresh interpreter (spawn, not fork: this process has TensorFlow loaded)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, *args, **kwargs).result()


def median_or_none(values: list[float | None]) -> float | None:
    return None if None in values else round(statistics.median(values), 1)


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Median (and min/max) over repeats per path, and the speed-ups of realfake's path."""
    out: dict = {}
    for path, results in runs.items():
        speeds = [r["images_per_s"] for r in results]
        out[path] = {
            "images_per_s": round(statistics.median(speeds), 1),
            "images_per_s_min_max": [round(min(speeds), 1), round(max(speeds), 1)],
            "step_s_median": round(statistics.median(r["step_s_median"] for r in results), 4),
            "first_step_s": round(statistics.median(r["first_step_s"] for r in results), 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results)),
            "input_only_images_per_s": median_or_none([r["input_only_images_per_s"] for r in results]),
        }
    ours = out["realfake"]["images_per_s"]
    out["speedup"] = {
        "realfake_vs_plain": round(ours / out["plain"]["images_per_s"], 2),
        "realfake_vs_reference_jpeg": round(ours / out["reference_jpeg"]["images_per_s"], 2),
    }
    return out


def machine() -> str:
    """Host, CPU model, cores, the accelerator Keras' backend sees, and the versions that decide the speed."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = (models[0] if models else platform.processor()) + _cpu_generation(lines)
    backend = keras.backend.backend()
    versions = f"Keras {version('keras')} on {backend} {version(backend)}"
    host = f"{platform.node()} {platform.machine()} {cpu}, {os.cpu_count()} cores"
    accelerators = ", ".join(_accelerators(backend)) or "no GPU"
    return f"{host}, {accelerators}, Python {platform.python_version()}, {versions}"


def _cpu_generation(cpuinfo_lines: list[str]) -> str:
    """' (family F model M, AMX)': a VM's CPU name hides the generation, which moves CPU speeds by 2-3x here."""
    fields = {}
    for line in cpuinfo_lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "cpu family" not in fields:
        return ""
    amx = ", AMX" if "amx_tile" in fields.get("flags", "").split() else ""
    return f" (family {fields['cpu family']} model {fields.get('model', '?')}{amx})"


def _accelerators(backend: str) -> list[str]:
    if backend == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--models", nargs="+", default=["cnn"], help="models.<name> sections of params.yaml")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="a Kaggle-layout CIFAKE zip")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--images", type=int, default=20000, help="train images sampled from the archive")
    parser.add_argument("--steps", type=int, default=50, help="timed train steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1: step 1 traces)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all paths; figures are medians")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1 or args.images < 2:
        parser.error("--warmup, --steps and --repeats must be >= 1, --images >= 2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params(args.params, sections=["base", "train", *(f"models.{m}" for m in args.models)])
    seed, image_size = params.base.seed, params.base.image_size
    report: dict = {
        "machine": machine(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],  # others' work on the shared cores
        "targets": "realfake_vs_plain >= 1; for the cnn, realfake_vs_reference_jpeg >= 5",
    }

    with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
        data = Path(tmp)
        t = time.perf_counter()
        report["images_sampled"] = prepare_data(args.archive, args.images, seed=seed, out=data)
        seconds = time.perf_counter() - t
        log.info("sampled, decoded and extracted %d images in %.1f s", report["images_sampled"], seconds)
        report["models"] = {}
        for name in args.models:
            spec = params.models[name]
            if hasattr(spec, "weights"):
                spec = dataclasses.replace(spec, weights=None)  # offline; speed does not depend on the init
            if args.images // spec.batch_size < 1:
                raise SystemExit(f"--images {args.images} is less than one batch of {spec.batch_size}")
            runs: dict[str, list[dict]] = {path: [] for path in PATHS}
            settings = dict(image_size=image_size, seed=seed, warmup=args.warmup, steps=args.steps)
            for _ in range(args.repeats):
                for path in PATHS:  # paths take turns, so slow drift in machine load hits each alike
                    result = run_child(path, name, spec, data=data, **settings)
                    runs[path].append(result)
            report["models"][name] = {
                "images": runs["realfake"][0]["images"],
                "batch_size": spec.batch_size,
                "warmup_steps": args.warmup,
                "timed_steps": args.steps,
                "repeats": args.repeats,
                **summarize(runs),
            }
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
