"""classifiers.train_classifier: settings that travel from a models.<name> section into the compiled model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from realfake.data.prepare import Split
from realfake.params import load_params
from realfake.training import classifiers
from realfake.training.classifiers import train_classifier
from realfake.training.fit import fit_classifier


@pytest.mark.parametrize("jit_compile", [True, False])
def test_each_model_section_decides_its_own_xla_compilation(tmp_path, jit_compile):
    params = load_params(REPO / "params.yaml", sections=["train", "models.cnn"])
    spec = params.models["cnn"].model_copy(update=dict(epochs=1, batch_size=16, jit_compile=jit_compile))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(48) % 2).astype(np.uint8)
    names = ("REAL", "FAKE")
    result, _ = train_classifier(
        "cnn", spec, params.train, Split(images[:32], labels[:32], names), Split(images[32:], labels[32:], names),
        seed=0, state_root=tmp_path,
    )  # fmt: skip
    assert result.model.jit_compile is jit_compile
    assert result.epochs_run == 1


def test_degradations_budget_and_test_curve_travel_from_the_section_into_the_fit(tmp_path, monkeypatch):
    params = load_params(REPO / "params.yaml", sections=["train", "models.fast_robust"])
    spec = params.models["fast_robust"].model_copy(update=dict(epochs=3, batch_size=16, stage_filters=(4, 8),
                               warmup_epochs=0, jit_compile=False, max_train_minutes=1e-6))  # fmt: skip
    assert spec.degrade, "models.fast_robust lists no degradations"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(64) % 2).astype(np.uint8)
    names = ("REAL", "FAKE")
    train, val, test = (Split(images[a:b], labels[a:b], names) for a, b in ((0, 32), (32, 48), (48, 64)))
    calls = []

    def spy(model, train_batches, val_batches, **settings):
        calls.append((train_batches, val_batches, settings))
        if len(calls) > 1:
            raise NotImplementedError  # only the first call trains
        return fit_classifier(model, train_batches, val_batches, **settings)

    monkeypatch.setattr(classifiers, "fit_classifier", spy)
    result, state_dir = train_classifier("fast_robust", spec, params.train, train, val, seed=5, state_root=tmp_path,
                                         test=test)  # fmt: skip
    [(train_batches, val_batches, settings)] = calls
    assert settings["state_dir"] == state_dir
    assert train_batches.degrade == spec.degrade and train_batches.shuffle and train_batches.seed == 5
    assert (train_batches.augment, train_batches.max_shift) == (spec.augment, spec.max_shift)
    assert not (val_batches.degrade or val_batches.shuffle or val_batches.transforms_pixels)  # validation: as is
    assert settings["max_train_minutes"] == spec.max_train_minutes
    np.testing.assert_array_equal(settings["test_curve"].images, test.images)
    assert result.stopped_by_budget and result.epochs_run == 1
    assert "test_accuracy" in result.history and not any(k.startswith("test_") for k in result.best_metrics)

    # Degradations change the batches, so they are part of the state's fingerprint: no resuming across them.
    with pytest.raises(NotImplementedError):
        train_classifier("fast_robust", spec.model_copy(update=dict(degrade=())), params.train, train, val, seed=5,
                         state_root=tmp_path, test=test)  # fmt: skip
    assert calls[1][2]["state_dir"] != state_dir and calls[1][2]["fingerprint"] != settings["fingerprint"]
