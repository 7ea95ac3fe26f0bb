"""stages/run.sh runs a stage with the project's interpreter whichever `dvc` starts it, and a zip bomb is refused
by the real download stage without the memory it would take to read it."""

import os
import stat
import subprocess
import sys
import zipfile

from stage_helpers import REPO, tiny_params, write_params


def fake_venv(root, marker):
    """root/.venv/bin/python: a wrapper that records its use, then runs the tests' interpreter."""
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho used > "{marker}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)


def run_stage(cwd, env, *args):
    return subprocess.run(["sh", str(REPO / "stages" / "run.sh"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_main_repositorys_venv_runs_the_stage(tmp_path):
    marker = tmp_path / "used"
    fake_venv(tmp_path, marker)
    env = {k: v for k, v in os.environ.items() if k != "REALFAKE_PYTHON"} | {"DVC_ROOT": str(tmp_path),
                                                                            "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = run_stage(tmp_path, env, "prepare", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Stage `prepare`" in done.stdout and marker.read_text().strip() == "used"
    marker.unlink()
    env["REALFAKE_PYTHON"] = sys.executable  # an explicit interpreter wins
    assert run_stage(tmp_path, env, "prepare", "--help").returncode == 0 and not marker.exists()


def bomb(path, size=1536 * 1024 * 1024):
    """A zip whose train/REAL/bomb.jpg inflates to `size` bytes of zeros (deflated to about 1.5 MB)."""
    zeros = bytes(1 << 24)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("train/REAL/bomb.jpg", "w", force_zip64=True) as entry:
            for _ in range(size // len(zeros)):
                entry.write(zeros)
        for folder in ("train/FAKE", "test/REAL", "test/FAKE"):
            archive.writestr(f"{folder}/0.jpg", b"\xff\xd8" + bytes(100))


def test_a_zip_bomb_is_refused_by_the_download_stage_in_little_memory(tmp_path, mlflow_uri):
    archive = tmp_path / "bomb.zip"
    bomb(archive)
    assert archive.stat().st_size < 16 * 1024 * 1024
    args = write_params(tmp_path, tiny_params(data={"source": "archive", "archive": str(archive)}))
    # A parent of its own, so that the peak memory of its children is the stage's alone.
    measure = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "print(done.stderr, file=sys.stderr)\n"
    )
    stage = [sys.executable, str(REPO / "stages" / "download.py"), "--params", str(args.params)]
    done = subprocess.run([sys.executable, "-c", measure, *stage], cwd=tmp_path, capture_output=True, text=True,
                          env=os.environ | {"DVC_ROOT": str(tmp_path)}, timeout=300)  # fmt: skip
    returncode, peak_kb = map(int, done.stdout.split())
    assert returncode == 1 and "bomb.jpg" in done.stderr and "zip bomb" in done.stderr, done.stderr[-2000:]
    assert peak_kb / 1024 < 600, f"peak RSS {peak_kb / 1024:.0f} MB"
