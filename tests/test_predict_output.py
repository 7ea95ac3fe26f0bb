"""`realfake predict` when its output cannot be written, when interrupted, and with control characters in names:
its own exit status and one line, never a traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from realfake.serving import cli
from realfake.serving.predict import Prediction, format_table


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    return root


def predict(folder, **stdout):
    """`realfake predict folder` (the shipped detector) in a fresh process, outside any repository."""
    return subprocess.run([sys.executable, "-m", "realfake.serving.cli", "predict", str(folder)], cwd=folder,
                          stderr=subprocess.PIPE, text=True, timeout=300, **stdout)  # fmt: skip


def one_quiet_line(result, words):
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and words in lines[-1], result.stderr
    assert result.returncode == cli.EXIT_OUTPUT


def test_a_pipe_whose_reader_went_away(folder):
    read, write = os.pipe()
    os.close(read)
    try:
        one_quiet_line(predict(folder, stdout=write), "the reader of stdout went away")
    finally:
        os.close(write)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk(folder):
    with open("/dev/full", "w") as full:
        one_quiet_line(predict(folder, stdout=full), "cannot write to stdout")


def test_a_closed_stdout(folder):
    script = f"exec {sys.executable} -m realfake.serving.cli predict {folder} >&-"
    result = subprocess.run(["sh", "-c", script], cwd=folder, stderr=subprocess.PIPE, text=True, timeout=300)
    one_quiet_line(result, "stdout is closed")


def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_predict", interrupted)
    parser = cli.build_parser

    def patched():
        built = parser()
        built._subparsers._group_actions[0].choices["predict"].set_defaults(func=interrupted)
        return built

    monkeypatch.setattr(cli, "build_parser", patched)
    assert cli.main(["predict", "x.jpg"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "realfake: interrupted"


def test_the_table_escapes_control_characters_in_names():
    row = Prediction(path="two\nlines\t.jpg", p_fake=0.5, label="fake", model="m", resampled=False, ood=False,
                     ood_score=0.0)  # fmt: skip
    table = format_table([row])
    assert len(table.splitlines()) == 2 and "two\\nlines\\t.jpg" in table
