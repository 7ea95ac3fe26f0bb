"""A stage whose params.yaml is rewritten while it runs (a second `dvc exp run` in the same workspace) fails with one
line, so DVC never records the new values for outputs made with the old ones."""

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


@pytest.mark.parametrize("rewrite", [False, True])
def test_params_rewritten_during_a_stage_fail_it(tmp_path, rewrite):
    (tmp_path / "stages").mkdir()
    script = tmp_path / "stages" / "probe.py"
    script.write_text(PROBE.format(rewrite=rewrite))
    (tmp_path / "params.yaml").write_text("base: {seed: 1}\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    if not rewrite:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1
    assert "params.yaml changed while this stage ran" in done.stderr and "Traceback" not in done.stderr
