"""Benchmark: decoding CIFAKE into arrays, and a no-op `dvc repro`.

    .venv/bin/python benchmarks/decode_and_noop.py [--archive data/cifake.zip]

Each decoder runs in its own fresh process so peak RSS is its own. Prints the machine, the command and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO / "data" / "cifake.zip"  # the pipeline's own local copy (git-ignored)

NAIVE = """
import io, sys, time, zipfile, resource
import numpy as np
from PIL import Image
t = time.perf_counter()
with zipfile.ZipFile(sys.argv[1]) as zf:
    images = [np.asarray(Image.open(io.BytesIO(zf.read(i)))) for i in zf.infolist() if i.filename.endswith('.jpg')]
images = np.stack(images)
print(time.perf_counter() - t, len(images), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

REALFAKE = """
import sys, time, resource
sys.path.insert(0, sys.argv[2])
from realfake.data import cifake
t = time.perf_counter()
raw = cifake.decode_entries(cifake.read_zip(sys.argv[1]))
print(time.perf_counter() - t, len(raw.images), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_snippet(code: str, *args: str) -> tuple[float, int, float]:
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    seconds, count, rss_kb = out.stdout.split()[-3:]
    return float(seconds), int(count), int(rss_kb) / 1024


def noop_repro(archive: Path) -> dict:
    """Run download+prepare once in a temporary copy, then time `dvc repro` with nothing changed."""
    sys.path.insert(0, str(REPO / "tests"))
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(
            REPO,
            work,
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "data", ".cache", "mlflow.db", "mlartifacts", "models", "__pycache__"
            ),
        )
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["data"].update(source="archive", archive=str(archive))
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = os.environ | {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        }
        for cmd in (
            ["git", "init", "-q"],
            ["git", "add", "-A"],
            ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "b"],
        ):
            subprocess.run(cmd, cwd=work, check=True, env=env)
        dvc = [sys.executable, "-m", "dvc"]
        t = time.perf_counter()
        subprocess.run([*dvc, "repro", "download", "prepare"], cwd=work, check=True, env=env, capture_output=True)
        first = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter()
            out = subprocess.run(
                [*dvc, "repro", "download", "prepare"], cwd=work, check=True, env=env, capture_output=True, text=True
            )
            times.append(time.perf_counter() - t)
            assert "didn't change" in out.stdout or "up to date" in out.stdout, out.stdout
        return {"first_repro_s": round(first, 1), "noop_repro_s": [round(x, 2) for x in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--skip-noop", action="store_true")
    args = parser.parse_args()
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}\ncommand: {' '.join(sys.argv)}\narchive: {args.archive}")
    naive = run_snippet(NAIVE, str(args.archive))
    ours = run_snippet(REALFAKE, str(args.archive), str(REPO / "src"))
    result = {
        "naive_pillow_loop": {"seconds": round(naive[0], 2), "images": naive[1], "peak_rss_mb": round(naive[2])},
        "realfake_decode": {"seconds": round(ours[0], 2), "images": ours[1], "peak_rss_mb": round(ours[2])},
    }
    if not args.skip_noop:
        result["dvc"] = noop_repro(args.archive)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
