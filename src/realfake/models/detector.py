"""A detector = a saved binary model plus what was fitted after training: its temperature (inside the model, as a
`Calibration` layer), thresholds for chosen false-positive rates, and out-of-distribution statistics.

The extras live beside the model in `<name>.detector.npz` (arrays, plus one JSON string `info`), so that
`realfake predict` can flag images far from the training data and pick a threshold by false-positive rate. This
module imports Keras only inside `with_calibration`: predict and serve read the extras without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from realfake.errors import DataError
from realfake.fileio import atomic_path

if TYPE_CHECKING:
    import keras

FORMAT = 1


@dataclasses.dataclass(frozen=True)
class DetectorInfo:
    temperature: float  # 1.0 = not calibrated
    operating_points: dict[str, dict]  # point name -> {max_fpr, threshold, fpr, recall} on the validation split
    ood_means: np.ndarray  # (classes, features)
    ood_precision: np.ndarray  # (features, features)
    ood_cutoff: float
    ood_percentile: float
    fitted_on: dict[str, Any]  # what each part was fitted on, in words and counts


def info_path(model_path: Path) -> Path:
    """models/fast.keras, or its ONNX export models/fast.onnx -> models/fast.detector.npz."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name.removesuffix(".keras").removesuffix(".onnx") + ".detector.npz")


def with_calibration(model: keras.Model, temperature: float) -> keras.Model:
    """`model` with a `Calibration(temperature)` layer after its output (same layers, same weights, same name)."""
    import keras

    from realfake.models.layers import Calibration

    outputs = Calibration(temperature, name="calibration")(model.outputs[0])
    return keras.Model(model.inputs[0], outputs, name=model.name)


def save_info(path: Path, info: DetectorInfo) -> None:
    meta = {
        "format": FORMAT,
        "temperature": info.temperature,
        "operating_points": info.operating_points,
        "ood_cutoff": info.ood_cutoff,
        "ood_percentile": info.ood_percentile,
        "fitted_on": info.fitted_on,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, info=np.array(json.dumps(meta)), ood_means=info.ood_means, ood_precision=info.ood_precision)


def load_info(path: Path) -> DetectorInfo:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["info"]))
            means, precision = stored["ood_means"], stored["ood_precision"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a readable detector file ({exc}); rebuild it with the train stage") from exc
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: detector file format {meta.get('format')}, expected {FORMAT}; rebuild it")
    return DetectorInfo(
        temperature=float(meta["temperature"]),
        operating_points=meta["operating_points"],
        ood_means=means,
        ood_precision=precision,
        ood_cutoff=float(meta["ood_cutoff"]),
        ood_percentile=float(meta["ood_percentile"]),
        fitted_on=meta.get("fitted_on", {}),
    )
