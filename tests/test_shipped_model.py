"""The detectors that ship inside the package: each loads in safe mode with its extras and card, its card is its
recorded run's and its MODEL_CARD.md is rendered from it, the default is the one a plain `make ship` ships, and each
card's test accuracy is what a fresh scoring of the large archive's test split gives (-m slow, with
cifake-large.zip)."""

import json

import numpy as np
import pytest
from conftest import DATA_DIR
from stage_helpers import REPO

from realfake.data import cifake
from realfake.evaluation.scoring import p_fake, predict_proba
from realfake.models.detector import info_path, load_info
from realfake.models.saving import load_model
from realfake.pipeline.model_card import model_card
from realfake.serving import models as shipped

LARGE = DATA_DIR / "cifake-large.zip"
# what docs/fast-detector.md promises for each shipped detector on CIFAKE's test split: accuracy, robust accuracy
FLOORS = {"fast-60min": (0.97, 0.75), "fast-robust-60min": (0.96, 0.94), "fast-robust-long": (0.965, 0.95)}
NAMES = shipped.shipped_names()


def test_the_default_is_what_a_plain_make_ship_ships_and_every_detector_has_its_floor():
    default = shipped.shipped_detector()
    makefile = (REPO / "Makefile").read_text()
    assert f"SHIP_RECIPE ?= {default.name}\n" in makefile and f"MODEL ?= {default.card['model_section']}\n" in makefile
    assert NAMES[0] == default.name and set(NAMES) == set(FLOORS)


@pytest.mark.parametrize("name", NAMES)
def test_each_shipped_detector_loads_in_safe_mode_with_its_extras_and_its_recorded_card(name):
    detector = shipped.shipped_detector(name)
    keras_file, card = detector.file("keras"), detector.card
    model = load_model(keras_file, rebuild_with="make ship")  # safe mode: no Lambda layer, no pickle
    for kind in ("keras", "onnx", "detector"):
        assert detector.file(kind).stat().st_size <= 2 * 1024 * 1024
    assert [layer.__class__.__name__ for layer in model.layers][-2:] == ["TTAMean", "Calibration"]
    info = load_info(info_path(keras_file))
    assert detector.file("detector") == info_path(keras_file)
    assert set(info.operating_points) == {"fpr_0.01", "fpr_0.05"} and info.ood_cutoff > 0
    accuracy_floor, robust_floor = FLOORS[name]
    assert card["recipe"] == name and card["test"]["accuracy"] >= accuracy_floor
    assert card["robust_accuracy"] >= robust_floor
    recorded = json.loads((REPO / "results" / f"{name}.json").read_text())["seeds"]
    row = next(row for row in recorded if row["experiment"] == card["experiment"])[card["model_section"]]
    assert row["test_accuracy"] == card["test"]["accuracy"]  # the card is the recorded run's
    assert row["robustness"] == card["robustness"] and row["robust_accuracy"] == card["robust_accuracy"]
    text = detector.model_card.read_text()
    assert text == model_card(card)  # rendered from this card, nothing edited by hand
    assert "## Limits" in text and f"{card['test']['accuracy']:.4f}" in text


@pytest.mark.slow
@pytest.mark.skipif(not LARGE.exists(), reason=f"{LARGE} not present (set REALFAKE_DATA_DIR)")
@pytest.mark.parametrize("name", NAMES)
def test_each_card_accuracy_is_what_the_large_archive_test_split_gives(name):
    entries = [e for e in cifake.read_zip(LARGE) if cifake.SPLITS[e.split] == "test"]
    raw = cifake.decode_entries(entries)
    labels = raw.label.astype(np.int64)  # CIFAKE's FAKE (1) is the models' fake (1)
    detector = shipped.shipped_detector(name)
    model = load_model(detector.file("keras"), rebuild_with="make ship")
    threshold = detector.card["test"]["threshold"]
    accuracy = float(np.mean((p_fake(predict_proba(model, raw.images, batch_size=500)) >= threshold) == labels))
    assert len(labels) == detector.card["test"]["n"] == 10_000
    assert accuracy == pytest.approx(detector.card["test"]["accuracy"], abs=0.001)  # the same images; numerics differ
    assert accuracy >= FLOORS[name][0]
