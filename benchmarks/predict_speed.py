"""Wall time and peak memory of `realfake predict`, each case in a fresh process, for the ONNX path (the shipped
fast.onnx, no TensorFlow) and the Keras path (the same detector's fast.keras):

- one 32x32 CIFAKE JPEG (the median of --repeat runs);
- a folder of 10,000 CIFAKE JPEGs, extracted from cifake-large.zip into a temporary folder at run time;
- one 7000x7000 PNG (49 megapixels, written at run time).

Peak memory is the child's own high-water resident set size (VmHWM). Usage:

    python benchmarks/predict_speed.py [--archive data/cifake-large.zip] [--count 10000] [--skip-keras]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DETECTOR = REPO / "src" / "realfake" / "serving" / "detector"
DATA = Path(os.environ.get("REALFAKE_DATA_DIR", REPO / "data"))


# Runs the command and reports its own peak RSS (VmHWM) on its last stderr line: getrusage's ru_maxrss would include
# the RSS of this (forking) process, which Linux carries across exec.
CHILD = (
    "import sys\nfrom realfake.serving.cli import main\nrc = main(sys.argv[1:])\n"
    "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)\nsys.exit(rc)"
)


def run(args: list[str]) -> dict:
    """`realfake predict ARGS` in a new process: {wall_s, peak_rss_mb, exit}."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-c", CHILD, "predict", *args, "--format", "csv"]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tempfile.gettempdir(),
                          env=env)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"predict {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    peak_kb = int(done.stderr.decode().strip().splitlines()[-1])
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(peak_kb / 1024, 1), "exit": done.returncode}


def extract(archive: Path, folder: Path, count: int) -> list[Path]:
    """The first `count` test images of the archive (then train images), written as their JPEG bytes."""
    with zipfile.ZipFile(archive) as source:
        names = [n for n in source.namelist() if n.lower().endswith(".jpg")]
        names = sorted(names, key=lambda n: (not n.startswith("test/"), n))[:count]
        out = []
        for i, name in enumerate(names):
            path = folder / f"{i:05d}.jpg"
            path.write_bytes(source.read(name))
            out.append(path)
    return out


def big_png(path: Path, side: int = 7000) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (side // 50, side // 50, 3), dtype=np.uint8)
    Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR).save(path, compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DATA / "cifake-large.zip")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the one-image case (median)")
    parser.add_argument("--skip-keras", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    models = {"onnx": DETECTOR / "fast.onnx"} | ({} if args.skip_keras else {"keras": DETECTOR / "fast.keras"})
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="realfake-bench-") as tmp:
        folder = Path(tmp) / "cifake"
        folder.mkdir()
        images = extract(args.archive, folder, args.count)
        big = Path(tmp) / "big.png"
        big_png(big)
        for kind, model in models.items():
            one = [run([str(images[0]), "--model", str(model)]) for _ in range(args.repeat)]
            results[f"{kind}/one_image"] = min(one, key=lambda r: r["wall_s"]) | {
                "wall_s_median": statistics.median(r["wall_s"] for r in one)}  # fmt: skip
            many = run([str(folder), "--model", str(model)])
            many["images_per_s"] = round(len(images) / many["wall_s"], 1)
            results[f"{kind}/folder_{len(images)}"] = many
            results[f"{kind}/png_7000x7000"] = run([str(big), "--model", str(model)])
            print(json.dumps({k: v for k, v in results.items() if k.startswith(kind)}, indent=1), file=sys.stderr)
    print("| case | path | wall (s) | peak RSS (MB) | images/s |\n|---|---|---|---|---|")
    for key, value in results.items():
        if "/" in key:
            kind, case = key.split("/")
            wall = value.get("wall_s_median", value["wall_s"])
            print(f"| {case} | {kind} | {wall:.2f} | {value['peak_rss_mb']:.0f} | {value.get('images_per_s', '')} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
