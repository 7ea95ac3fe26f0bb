"""A trained model as ONNX, for inference without TensorFlow: `realfake predict` and `realfake serve` run it with
ONNX Runtime (a few MB of memory and milliseconds of start-up instead of TensorFlow's seconds and hundreds of MB).

The ONNX graph takes what the Keras model takes (uint8 pixel values as float32, (N, height, width, 3)) and gives
three outputs:

- `probabilities` (N, C): the model's own output (one sigmoid column, or C softmax columns);
- `p_fake` (N,): P(fake) = 1 - P(real) (the sigmoid column itself for a one-column model);
- `features` (N, F): the input of the model's last Dense layer averaged over its test-time views, the features the
  out-of-distribution score reads (`evaluation.ood.embed`).

Its metadata (`metadata_props`) records the SHA-256 of the `.keras` file it was exported from, so a stale export
can be told from a current one, plus the class names and the input size.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import keras
import numpy as np
from keras import ops

from realfake.data.sources import sha256_of
from realfake.data.threeclass import THREE_CLASSES
from realfake.errors import DataError
from realfake.evaluation.ood import feature_layer
from realfake.fileio import atomic_path
from realfake.models.layers import TTAMean, TTAViews
from realfake.models.saving import load_model

OUTPUTS = ("probabilities", "p_fake", "features")
SOURCE_SHA256 = "realfake.source_sha256"  # metadata keys
SOURCE_NAME = "realfake.source_name"
CLASS_NAMES = "realfake.class_names"
INPUT_SIZE = "realfake.input_size"  # "[width, height]"
FORMAT_KEY, FORMAT = "realfake.onnx_format", "1"
OPSET = 17


def class_names(width: int) -> tuple[str, ...]:
    if width in (1, 2):
        return ("real", "fake")
    if width == len(THREE_CLASSES):
        return tuple(THREE_CLASSES)
    raise DataError(f"a model with {width} outputs is not a realfake classifier (1, 2 or 3 outputs)")


def inference_graph(model: keras.Model) -> keras.Model:
    """`model` with the outputs OUTPUTS (same layers, same weights), features averaged over TTA views."""
    probabilities = model.outputs[0]
    features = feature_layer(model).input
    views = next((layer.views for layer in model.layers if isinstance(layer, TTAViews)), 1)
    if views > 1:
        features = TTAMean(views, name="feature_tta_mean")(features)
    one_column = probabilities.shape[-1] == 1
    p_fake = ops.reshape(probabilities, (-1,)) if one_column else 1.0 - probabilities[:, 0]
    return keras.Model(model.inputs[0], [probabilities, p_fake, features], name=f"{model.name}_inference")


def _rename_outputs(graph, names: tuple[str, ...]) -> None:
    """Give the ONNX graph's outputs `names` (tf2onnx names them after internal tensors)."""
    for output, name in zip(graph.output, names, strict=True):
        old = output.name
        for node in graph.node:
            node.output[:] = [name if o == old else o for o in node.output]
            node.input[:] = [name if i == old else i for i in node.input]
        output.name = name


def export_onnx(keras_model_path: Path, onnx_path: Path, *, opset: int = OPSET) -> dict[str, str]:
    """Export the `.keras` model at `keras_model_path` to `onnx_path` (atomically); returns the metadata stored."""
    import onnx

    keras_model_path, onnx_path = Path(keras_model_path), Path(onnx_path)
    model = load_model(keras_model_path, rebuild_with=f"dvc repro train@{keras_model_path.stem}")
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise DataError(f"{keras_model_path}: takes inputs of shape {shape}, not RGB images of a fixed size")
    _prepare_for_tracing(model)
    graph = inference_graph(model)
    spec = [keras.InputSpec(shape=(None, *shape[1:]), dtype="float32", name="images")]
    with tempfile.TemporaryDirectory(prefix="realfake-onnx-") as tmp:
        raw = Path(tmp) / "model.onnx"
        graph.export(str(raw), format="onnx", verbose=False, input_signature=spec, opset_version=opset)
        exported = onnx.load(str(raw))
    if len(exported.graph.input) != 1:
        extra = [value.name for value in exported.graph.input[1:]]
        raise DataError(f"{keras_model_path}: the ONNX graph has inputs besides the images: {extra}")
    _rename_outputs(exported.graph, OUTPUTS)
    exported.graph.input[0].name = _rename_input(exported.graph, "images")
    for value in (*exported.graph.input, *exported.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    metadata = {
        FORMAT_KEY: FORMAT,
        SOURCE_SHA256: sha256_of(keras_model_path),
        SOURCE_NAME: keras_model_path.name,
        CLASS_NAMES: json.dumps(class_names(int(model.output_shape[-1]))),
        INPUT_SIZE: json.dumps([int(shape[2]), int(shape[1])]),
    }
    del exported.metadata_props[:]
    for key, value in metadata.items():
        exported.metadata_props.add(key=key, value=value)
    exported.producer_name = "realfake"
    exported.doc_string = f"{keras_model_path.name} for inference: outputs {', '.join(OUTPUTS)}"
    onnx.checker.check_model(exported)
    with atomic_path(onnx_path) as out:
        onnx.save(exported, str(out))
    return metadata


def _prepare_for_tracing(model: keras.Model) -> None:
    """Make `model` (in place; loaded for export only) traceable by tf2onnx without changing its outputs.

    tf2onnx takes every non-variable tensor a traced function captures for a graph input. Keras 3 has two:
    - activity regularizers: a layer computes its activity loss in every call, inference included, and the
      regularizer's coefficient is a captured eager tensor. Freezing prunes that dead loss branch, but tf2onnx still
      hands grappler the capture as a fetch node ("Fetch node .../mul/x doesn't exist in graph"), and grappler fails
      with "Failed to import metagraph". The losses do not reach the outputs, so the regularizers are dropped.
    - Normalization layers built with a fixed mean and variance (EfficientNetV2's own preprocessing) hold them as
      eager tensors, which would become extra ONNX inputs; as numpy arrays they are traced as constants.
    """
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if getattr(layer, "activity_regularizer", None) is not None:
            layer.activity_regularizer = None
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            layer.mean = np.asarray(keras.ops.convert_to_numpy(layer.mean))
            layer.variance = np.asarray(keras.ops.convert_to_numpy(layer.variance))


def _rename_input(graph, name: str) -> str:
    old = graph.input[0].name
    for node in graph.node:
        node.input[:] = [name if i == old else i for i in node.input]
    return name


def keras_outputs(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """What the exported graph should give for uint8 `images`, computed by Keras (for parity checks)."""
    probabilities, p_fake, features = inference_graph(model)(images.astype(np.float32), training=False)
    return {"probabilities": np.asarray(probabilities), "p_fake": np.asarray(p_fake), "features": np.asarray(features)}


def check_parity(keras_model_path: Path, onnx_path: Path, images: np.ndarray) -> dict[str, float]:
    """{p_fake, probabilities, features: largest absolute difference, features_width} between the ONNX graph at
    `onnx_path` (run by ONNX Runtime) and the Keras model at `keras_model_path`, on uint8 `images`."""
    import onnxruntime as ort

    model = load_model(Path(keras_model_path), rebuild_with="dvc repro")
    want = keras_outputs(model, images)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": images.astype(np.float32)}), strict=True))
    diffs = {key: float(np.max(np.abs(got[key] - want[key]))) for key in OUTPUTS}
    return {**diffs, "features_width": int(got["features"].shape[1])}
