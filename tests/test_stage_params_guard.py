"""A stage whose params.yaml is rewritten while it runs (a second `dvc exp run` in the same workspace) fails with one
line, so DVC never records the new values for outputs made with the old ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PROBE = """
from realfake.pipeline import stage

def main(paths, args):
    if {rewrite}:
        args.params.write_text("base: {{seed: 2}}\\n")  # what the second experiment's `-S base.seed=2` does

stage.run(main, description="probe", script=__file__)
"""


def run_probe(root: Path, source: str, *, timeout: int, **env) -> subprocess.CompletedProcess:
    """Run `source` as the stage script stages/probe.py of a repository at `root` whose params.yaml sets seed 1."""
    (root / "stages").mkdir()
    script = root / "stages" / "probe.py"
    script.write_text(source)
    (root / "params.yaml").write_text("base: {seed: 1}\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    return subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("rewrite", [False, True])
def test_params_rewritten_during_a_stage_fail_it(tmp_path, rewrite):
    done = run_probe(tmp_path, PROBE.format(rewrite=rewrite), timeout=120, MLFLOW_TRACKING_URI="")
    if not rewrite:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1
    assert "params.yaml changed while this stage ran" in done.stderr and "Traceback" not in done.stderr


PUBLISH_PROBE = """
from types import SimpleNamespace

import keras

from realfake.pipeline import stage
from realfake.pipeline.training_run import publish


def main(paths, args):
    if {rewrite}:
        args.params.write_text("base: {{seed: 2}}\\n")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="probe")
    result = SimpleNamespace(resumed_epochs=0, history={{"loss": [0.7, 0.6]}})
    publish(paths, name="fast", result=result, model=model, summary={{"best_epoch": 2}}, detector=None,
            state_dir=paths.root / ".cache" / "state" / "train" / "fast" / "abc123", registered_name="probe",
            class_names=["real", "fake"], image_shape=(4,), batch_size=2)

stage.run(main, description="probe", script=__file__)
"""


@pytest.mark.parametrize("rewrite", [False, True])
def test_a_refused_training_stage_leaves_the_previous_model_and_metrics(tmp_path, rewrite):
    """The params check comes before the outputs are replaced, and they are replaced together."""
    previous = {tmp_path / "models" / "fast.keras": b"the previous good model",
                tmp_path / "metrics" / "train" / "fast.json": b'{"describes": "the previous good model"}\n',
                tmp_path / "plots" / "train" / "fast.csv": b"loss\n0.9\n"}  # fmt: skip
    for path, content in previous.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    done = run_probe(tmp_path, PUBLISH_PROBE.format(rewrite=rewrite), timeout=180, REALFAKE_TRACKING="off")
    now = {path: path.read_bytes() for path in previous}
    assert not [p for p in tmp_path.rglob(".*.tmp")], "staged outputs left behind"
    if rewrite:
        assert done.returncode == 1 and "params.yaml changed while this stage ran" in done.stderr, done.stderr
        assert now == previous
        return
    assert done.returncode == 0, done.stderr
    assert all(now[path] != previous[path] for path in previous)
    metrics = json.loads(now[tmp_path / "metrics" / "train" / "fast.json"])
    assert metrics["best_epoch"] == 2 and metrics["training_fingerprint"] == "abc123"
