import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("REALFAKE_PYTHON", sys.executable)  # stages/run.sh runs stages with the tests' interpreter

from cifake_fixture import cifake_files, write_zip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Real CIFAKE zips for the `-m slow` tests (cifake-small.zip, cifake-large.zip): REALFAKE_DATA_DIR, else data/.
DATA_DIR = Path(os.environ.get("REALFAKE_DATA_DIR") or REPO / "data")


@pytest.fixture
def cifake_zip(tmp_path) -> Path:
    """A valid Kaggle-layout zip: 24 images per folder, two duplicate pairs in train/FAKE."""
    return write_zip(tmp_path / "cifake.zip", cifake_files())


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def pytest_collection_modifyitems(config, items):
    """Run the end-to-end `dvc repro` test first: it is the longest, and with one xdist worker per core
    (`--dist worksteal`) the other tests then run beside it, the idle worker taking them from the busy one's queue
    (the whole suite: 8.4 min; 10.1 with `--dist loadfile`, which left one worker with most of the files)."""
    items.sort(key=lambda item: item.path.name != "test_pipeline.py")  # stable: the rest keep their order
