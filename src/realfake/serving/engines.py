"""What scores images: an ONNX graph run by ONNX Runtime (no TensorFlow), or a Keras model; and the detector
extras stored beside either (`<name>.detector.npz`: operating points and out-of-distribution statistics), read by
`models.detector`, which imports no Keras.

Both engines answer the same question the same way: class probabilities (N, C) with P(real) in column 0 (a one-column
sigmoid model gives [1 - p, p]) and, when asked, the features the out-of-distribution score reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from realfake.errors import DataError
from realfake.models.detector import DetectorInfo, info_path, load_info

BINARY_CLASSES = ("real", "fake")
THREE_CLASSES = ("real", "sd_fake", "dcgan_fake")  # data.threeclass.THREE_CLASSES, without importing the data code
RUN_CHUNK = 32  # images per ONNX Runtime call (see OnnxEngine.score)


def extras_beside(model_path: Path) -> DetectorInfo | None:
    """The detector extras beside `model_path` (a .keras file or its .onnx export), or None when it has none."""
    path = info_path(model_path)
    return load_info(path) if path.is_file() else None


def names_for(width: int, what: str) -> tuple[str, ...]:
    """The classes a model's probabilities stand for: one sigmoid or two softmax outputs are real/fake."""
    if width in (1, 2):
        return BINARY_CLASSES
    if width == len(THREE_CLASSES):
        return THREE_CLASSES
    raise DataError(f"model {what} has {width} outputs; expected 1 or 2 (real/fake) or 3 ({THREE_CLASSES})")


def _two_columns(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if probabilities.shape[1] == 1:
        p = probabilities[:, 0]
        probabilities = np.stack([1.0 - p, p], axis=1)
    return probabilities


def ood_scores(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean (`evaluation.ood.scores`)."""
    from realfake.evaluation.ood import scores

    return scores(np.asarray(features, dtype=np.float64), means, precision)


class OnnxEngine:
    """A model exported by `models.onnx_export`, run by ONNX Runtime on the CPU."""

    kind = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: model file not found" if not path.exists() else f"{path}: not a regular file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  ONNX Runtime raises its own Fail/InvalidGraph/... types
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: not a loadable ONNX model ({first}); re-export it with `dvc repro`") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        outputs = {o.name for o in self.session.get_outputs()}
        if not {"probabilities", "features"} <= outputs or "realfake.input_size" not in meta:
            raise DataError(f"{path}: not an ONNX model exported by realfake (models.onnx_export); re-export it")
        self.metadata = dict(meta)
        width, height = json.loads(meta["realfake.input_size"])
        self.size = (int(width), int(height))
        self.class_names = tuple(json.loads(meta["realfake.class_names"]))
        self.name = path.stem
        self.input_name = self.session.get_inputs()[0].name

    def score(self, images: np.ndarray, *, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(class probabilities (N, C) float64, features (N, F) float64 or None) of uint8 images (N, H, W, 3),
        run RUN_CHUNK images at a time: a model with test-time views multiplies every activation by their number
        (the shipped detector: 18), and the graph's largest activation for 256 images would be ~300 MB."""
        wanted = ["probabilities", "features"] if features else ["probabilities"]
        probabilities, embedded = [], []
        for start in range(0, len(images), RUN_CHUNK):
            chunk = np.asarray(images[start : start + RUN_CHUNK], dtype=np.float32)
            outputs = self.session.run(wanted, {self.input_name: chunk})
            probabilities.append(_two_columns(outputs[0]))
            if features:
                embedded.append(np.asarray(outputs[1], dtype=np.float64))
        return np.concatenate(probabilities), (np.concatenate(embedded) if features else None)


class KerasEngine:
    """A Keras model (imports TensorFlow): the reference the ONNX engine is held to, and Grad-CAM's model."""

    kind = "keras"

    def __init__(self, model):
        shape = tuple(model.input_shape)
        if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
            raise DataError(f"model {model.name!r} takes inputs of shape {shape}, not RGB images of a fixed size")
        self.model, self._graph = model, None
        self.size = (int(shape[2]), int(shape[1]))
        self.class_names = names_for(int(model.output_shape[-1]), repr(model.name))
        self.name = model.name

    def score(self, images: np.ndarray, *, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """As `OnnxEngine.score`, through the same graph the ONNX export is made of (`onnx_export.inference_graph`),
        built once: a new feature extractor per batch would hold on to memory batch after batch."""
        from realfake.evaluation.scoring import predict_proba

        images = np.asarray(images, dtype=np.uint8)
        if not features:
            return predict_proba(self.model, images, batch_size=max(len(images), 1)), None
        if self._graph is None:
            from realfake.models.onnx_export import inference_graph

            self._graph = inference_graph(self.model)
        probabilities, embedded = [], []
        for start in range(0, len(images), RUN_CHUNK):
            out, _, feats = self._graph(images[start : start + RUN_CHUNK].astype(np.float32), training=False)
            probabilities.append(_two_columns(np.asarray(out)))
            embedded.append(np.asarray(feats, dtype=np.float64))
        return np.concatenate(probabilities), np.concatenate(embedded)
