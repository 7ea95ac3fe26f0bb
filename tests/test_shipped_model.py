"""The detector that ships inside the package: it loads in safe mode with its extras and card, and its card's test
accuracy is what a fresh scoring of the large archive's test split gives (-m slow, with cifake-large.zip)."""

import json

import numpy as np
import pytest
from conftest import DATA_DIR
from stage_helpers import REPO

from realfake.data import cifake
from realfake.evaluation.scoring import p_fake, predict_proba
from realfake.models.detector import info_path, load_info
from realfake.models.saving import load_model
from realfake.serving import models as shipped

LARGE = DATA_DIR / "cifake-large.zip"
FLOOR = 0.97  # what docs/fast-detector.md promises for the shipped model on CIFAKE's test split
RECIPE = "fast-60min"  # the recipe `make ship` ships


def test_the_shipped_detector_loads_in_safe_mode_with_its_extras_and_card():
    model = load_model(shipped.SHIPPED_KERAS, rebuild_with="make ship")  # safe mode: no Lambda layer, no pickle
    assert shipped.SHIPPED_KERAS.stat().st_size <= 2 * 1024 * 1024
    assert shipped.SHIPPED_MODEL.name == "fast.onnx" and shipped.SHIPPED_MODEL.stat().st_size <= 2 * 1024 * 1024
    assert [layer.__class__.__name__ for layer in model.layers][-2:] == ["TTAMean", "Calibration"]
    info = load_info(info_path(shipped.SHIPPED_KERAS))
    assert set(info.operating_points) == {"fpr_0.01", "fpr_0.05"} and info.ood_cutoff > 0
    card = json.loads(shipped.SHIPPED_CARD.read_text())
    assert card["recipe"] == RECIPE and card["test"]["accuracy"] >= FLOOR
    makefile = (REPO / "Makefile").read_text()  # a plain `make ship` rebuilds this card's model
    assert f"SHIP_RECIPE ?= {RECIPE}\n" in makefile and f"MODEL ?= {card['model_section']}\n" in makefile
    recorded = json.loads((REPO / "results" / f"{RECIPE}.json").read_text())["seeds"]
    row = next(row for row in recorded if row["experiment"] == card["experiment"])
    assert row["fast"]["test_accuracy"] == card["test"]["accuracy"]  # the card is the recorded run's
    text = (shipped.SHIPPED_KERAS.parent / "MODEL_CARD.md").read_text()
    assert "## Limits" in text and f"{card['test']['accuracy']:.4f}" in text


@pytest.mark.slow
@pytest.mark.skipif(not LARGE.exists(), reason=f"{LARGE} not present (set REALFAKE_DATA_DIR)")
def test_the_card_accuracy_is_what_the_large_archive_test_split_gives():
    entries = [e for e in cifake.read_zip(LARGE) if cifake.SPLITS[e.split] == "test"]
    raw = cifake.decode_entries(entries)
    labels = raw.label.astype(np.int64)  # CIFAKE's FAKE (1) is the models' fake (1)
    model = load_model(shipped.SHIPPED_KERAS, rebuild_with="make ship")
    accuracy = float(np.mean((p_fake(predict_proba(model, raw.images, batch_size=500)) >= 0.5) == labels))
    card = json.loads(shipped.SHIPPED_CARD.read_text())
    assert len(labels) == card["test"]["n"] == 10_000
    assert accuracy == pytest.approx(card["test"]["accuracy"], abs=0.001)  # the same images; numerics may differ
    assert accuracy >= FLOOR
