"""classifiers.train_classifier: settings that travel from a models.<name> section into the compiled model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import REPO

from realfake.classifiers import train_classifier
from realfake.params import load_params
from realfake.prepare import Split


@pytest.mark.parametrize("jit_compile", [True, False])
def test_each_model_section_decides_its_own_xla_compilation(tmp_path, jit_compile):
    params = load_params(REPO / "params.yaml", sections=["train", "models.cnn"])
    spec = dataclasses.replace(params.models["cnn"], epochs=1, batch_size=16, jit_compile=jit_compile)
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
