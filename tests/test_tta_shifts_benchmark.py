"""benchmarks/tta_shifts.py end to end: re-score a model that fast_detector.py saved, from the decoded arrays."""

from __future__ import annotations

import json
import os
import sys

from stage_helpers import REPO, sh

from realfake import cifake
from realfake.fileio import save_arrays


def run_script(script: str, *args) -> None:
    sh(sys.executable, str(REPO / "benchmarks" / script), *map(str, args), cwd=REPO, env=os.environ)


def test_tta_shifts_rescores_a_saved_fast_detector_from_the_decoded_arrays(tmp_path, cifake_zip):
    raw = cifake.decode_entries(cifake.read_zip(cifake_zip), workers=1)
    raw_npz = tmp_path / "raw.npz"
    save_arrays(raw_npz, **raw.arrays())
    results, models = tmp_path / "results", tmp_path / "models"
    run_script(
        "fast_detector.py", "--raw", raw_npz, "--seeds", 1, "--epochs", 1, "--output-dir", results, "--name", "tiny",
        "--save-models", models, "--set", "stage_filters=[8,16]",
    )  # fmt: skip
    assert (models / "tiny" / "fast_seed1.keras").exists()

    run_script(
        "tta_shifts.py", "--raw", raw_npz, "--name", "tiny", "--output-dir", results, "--models-dir", models,
        "--tta-max-shifts", 0, 1,
    )  # fmt: skip
    summary = json.loads((results / "tiny" / "summary.json").read_text())
    rescored = json.loads((results / "tiny" / "tta_shifts.json").read_text())
    by_shift = {run["tta_max_shift"]: run for run in rescored["runs"]}
    assert {shift: run["views"] for shift, run in by_shift.items()} == {0: 2, 1: 18}  # image + mirror, x 9 shifts
    # the same weights rebuilt without shifts score what the run recorded for its saved model
    assert by_shift[0]["test"]["accuracy"] == summary["runs"][0]["test"]["accuracy"]
    assert by_shift[1]["test"]["n"] == summary["runs"][0]["test"]["n"] == raw.count("test", "REAL") * 2
    assert rescored["chosen_by_val_accuracy"] in {0, 1} and set(rescored["per_setting"]) == {"0", "1"}
    assert "--raw" in rescored["command"] and rescored["trained_by"] == summary["command"]
