"""Real CIFAKE images (REALFAKE_DATA_DIR): the download and prepare stages on the small archive. Run with -m slow."""

import json
import sys

import numpy as np
import pytest
from conftest import DATA_DIR
from stage_helpers import REPO, tiny_params, write_params

sys.path.insert(0, str(REPO / "stages"))
import download as download_stage  # noqa: E402
import prepare as prepare_stage  # noqa: E402

from realfake.paths import ProjectPaths  # noqa: E402

SMALL = DATA_DIR / "cifake-small.zip"
SMALL_SHA256 = "d1f51e157e932c7725e893243c8f8754f5524b4f21078370360e854e60ae449b"


@pytest.mark.slow
@pytest.mark.skipif(not SMALL.exists(), reason=f"{SMALL} not present")
def test_download_and_prepare_on_cifake_small(tmp_path, mlflow_uri):
    params = tiny_params(
        data={"source": "archive", "archive": str(SMALL), "archive_sha256": SMALL_SHA256},
        prepare={"per_class": 4000, "val_fraction": 0.1},
    )
    args = write_params(tmp_path, params)
    paths = ProjectPaths(tmp_path)
    download_stage.main(paths, args)
    data = json.loads((tmp_path / "metrics/data.json").read_text())
    assert data["counts"] == {"train": {"REAL": 5000, "FAKE": 5000}, "test": {"REAL": 1000, "FAKE": 1000}}
    assert data["sha256"] == SMALL_SHA256 and data["duplicates"]["train_test_overlap"] == 0

    prepare_stage.main(paths, args)
    report = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert report["counts"]["val"] == {"real": 400, "fake": 400}
    assert report["counts"]["train"] == {"real": 3600 * 3, "fake": 3600 * 3}
    assert report["counts"]["test"] == {"real": 1000, "fake": 1000}
    with np.load(tmp_path / "data/prepared/val.npz") as val, np.load(tmp_path / "data/prepared/train.npz") as train:
        train_rows = {row.tobytes() for row in train["images"]}
        assert not any(row.tobytes() in train_rows for row in val["images"])  # no image on both sides
