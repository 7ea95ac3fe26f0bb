"""Grad-CAM (Selvaraju et al., 2017), the CIFAKE paper's explainability method: where in an image a model looks.

The heatmap of a class is ReLU(sum_k w_k A_k), with A the feature maps of one convolutional layer and w_k the
spatial mean of d(class score)/dA_k; it is resized to the input (bilinear) and scaled to [0, 1] per image.

Works on the models realfake's factories build: a chain of layers that may contain one nested backbone
(EfficientNetV2B3, ResNet50). At 32x32 input the backbones' last feature maps are 1x1, which cannot localise
anything, so the explained layer is the last one whose feature map is at least `min_size` pixels wide.
Test-time augmentation layers (the fast model's flip TTA) are skipped: the heatmap explains the model's pass
over the image as given; the class it explains and the probabilities reported are the whole model's.
"""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import tensorflow as tf

from realfake.evaluation.scoring import predict_labels
from realfake.models.layers import InferenceOnly

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Explained:
    heatmaps: np.ndarray  # (N, height, width) float32 in [0, 1]
    probabilities: np.ndarray  # (N, outputs) what the model output
    class_index: np.ndarray  # (N,) the class each heatmap explains
    layer: str  # the explained layer, "backbone/layer" inside a nested model


def _spatial_width(layer: keras.layers.Layer) -> int | None:
    shape = layer.output.shape
    return shape[2] if len(shape) == 4 else None


def _chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers in order, without its input and its test-time augmentation (one pass is explained)."""
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer | InferenceOnly)]


def _target(model: keras.Model, min_size: int) -> tuple[int, keras.Model | None, str]:
    """(chain position, feature model of a nested backbone or None, name) of the layer to explain."""
    chain = _chain(model)
    for position in reversed(range(len(chain))):
        layer = chain[position]
        if isinstance(layer, keras.Model):
            inner = [lay for lay in layer.layers if (_spatial_width(lay) or 0) >= min_size]
            if inner:
                features = keras.Model(layer.inputs, [inner[-1].output, layer.output])
                return position, features, f"{layer.name}/{inner[-1].name}"
        elif (_spatial_width(layer) or 0) >= min_size:
            return position, None, layer.name
    raise ValueError(f"model {model.name!r} has no feature map at least {min_size} pixels wide to explain")


def _forward(chain, position: int, features: keras.Model | None, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(feature maps of the explained layer, model output), running the chain of layers by hand."""
    maps = None
    for i, layer in enumerate(chain):
        if i == position and features is not None:
            maps, x = features(x, training=False)
        else:
            x = layer(x, training=False)
            if i == position:
                maps = x
    return maps, x


def class_scores(probabilities: tf.Tensor, class_index: tf.Tensor) -> tf.Tensor:
    """The score of `class_index` per image; a single sigmoid output p is P(class 1), so class 0 scores 1 - p."""
    if probabilities.shape[-1] == 1:
        p = probabilities[:, 0]
        return tf.where(class_index == 1, p, 1.0 - p)
    return tf.gather(probabilities, class_index, axis=1, batch_dims=1)


def predicted_class(outputs: np.ndarray, *, threshold: float) -> np.ndarray:
    """The class a model calls, decided as `evaluate` decides it (one sigmoid P(fake) becomes [1 - p, p])."""
    if outputs.shape[-1] == 1:
        outputs = np.concatenate([1.0 - outputs, outputs], axis=1)
    return predict_labels(outputs, threshold=threshold)


def gradcam(
    model: keras.Model, images: np.ndarray, *, min_size: int, threshold: float, class_index: np.ndarray | None = None
) -> Explained:
    """Grad-CAM heatmaps of uint8 images (N, H, W, 3) for `class_index` (default: the predicted class)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, height, width, 3), got {images.dtype} {images.shape}")
    chain = _chain(model)
    position, features, name = _target(model, min_size)
    x = tf.convert_to_tensor(images, dtype=tf.float32)
    # The whole model's output (with its test-time augmentation, if any) decides and captions the class.
    probabilities = model(x, training=False).numpy()
    chosen = (predicted_class(probabilities, threshold=threshold) if class_index is None else class_index).astype(
        np.int64
    )
    with tf.GradientTape() as tape:
        maps, single_pass = _forward(chain, position, features, x)
        scores = class_scores(single_pass, tf.constant(chosen))
    grads = tape.gradient(scores, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))[..., None]
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    heatmaps = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)
    return Explained(heatmaps, probabilities, chosen, name)


def select_examples(
    labels: np.ndarray, predicted: np.ndarray, *, per_cell: int, seed: int
) -> dict[tuple[int, bool], np.ndarray]:
    """{(true label, correct?): up to `per_cell` seeded indices}: right and wrong calls of each class."""
    rng = np.random.default_rng(seed)
    cells = {}
    for label in np.unique(labels):
        for correct in (True, False):
            members = np.flatnonzero((labels == label) & ((predicted == labels) == correct))
            cells[(int(label), correct)] = np.sort(rng.choice(members, size=min(per_cell, len(members)), replace=False))
    return cells


def grid_rows(cells: dict, class_names: tuple[str, ...]) -> dict[str, list[int]]:
    """`select_examples`' cells as grid rows in reading order, e.g. "real, called real" / "real, called fake"."""
    named = {}
    for (label, correct), indices in sorted(cells.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        called = class_names[label] if correct else "/".join(n for i, n in enumerate(class_names) if i != label)
        named[f"{class_names[label]}, called {called}"] = [int(i) for i in indices]
    return named


@dataclasses.dataclass
class ExplainedSample:
    images: np.ndarray  # (N, height, width, 3) uint8: the images shown, row by row
    explained: Explained  # their heatmaps
    tiles: dict[str, list[int]]  # grid row label -> positions in `images`
    rows: dict[str, list[dict]]  # grid row label -> [{"test_index", "p_fake"}] of its images
    candidates: int  # how many test images were scored
    candidates_accuracy: float  # the model's accuracy on them


def explain_sample(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], *, candidates: int,
    per_cell: int, seed: int, min_size: int, threshold: float, batch_size: int,
) -> ExplainedSample:  # fmt: skip
    """Score a seeded, class-balanced sample of `candidates` images, draw (seeded) up to `per_cell` of each right
    and wrong call per class, and explain only those shown."""
    from realfake.data.prepare import stratified_sample
    from realfake.evaluation.scoring import p_fake, predict_proba

    chosen = stratified_sample(labels, count=candidates, seed=seed)
    probabilities = predict_proba(model, images[chosen], batch_size=batch_size)
    predicted = predict_labels(probabilities, threshold=threshold)
    rows = grid_rows(select_examples(labels[chosen], predicted, per_cell=per_cell, seed=seed), class_names)
    shown = [i for indices in rows.values() for i in indices]  # candidate positions, row by row
    explained = gradcam(
        model, images[chosen[shown]], min_size=min_size, threshold=threshold, class_index=predicted[shown]
    )
    tiles, start = {}, 0
    for label, indices in rows.items():  # the same rows, as positions in `shown`
        tiles[label], start = list(range(start, start + len(indices))), start + len(indices)
    scores = p_fake(probabilities)
    listed = {label: [{"test_index": int(chosen[i]), "p_fake": float(scores[i])} for i in indices]
              for label, indices in rows.items()}  # fmt: skip
    accuracy = float((predicted == labels[chosen]).mean())
    return ExplainedSample(images[chosen[shown]], explained, tiles, listed, len(chosen), accuracy)


# ----------------------------------------------------------------------------- figures


def overlay(image: np.ndarray, heatmap: np.ndarray, *, scale: int, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB: the image enlarged `scale` times (nearest, so pixels stay visible) under the heatmap in 'jet'."""
    from matplotlib import colormaps

    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1).astype(np.float32)
    heat = np.repeat(np.repeat(heatmap, scale, axis=0), scale, axis=1)
    colour = colormaps["jet"](heat)[..., :3] * 255
    return np.clip((1 - alpha) * big + alpha * colour, 0, 255).astype(np.uint8)


def grid_png(
    images: np.ndarray,
    explained: Explained,
    rows: dict[str, np.ndarray],
    *,
    class_names: tuple[str, ...],
    title: str,
    path,
) -> None:
    """A PNG grid: one row per entry of `rows` (label: indices), each tile the image with its heatmap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max([len(indices) for indices in rows.values()] + [1])
    fig = Figure(figsize=(1.3 + 1.6 * columns, 0.6 + 1.8 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, indices) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
            if c >= len(indices):
                ax.set_frame_on(False)
                continue
            i = indices[c]
            ax.imshow(overlay(images[i], explained.heatmaps[i], scale=4))
            ax.set_title(caption(explained.probabilities[i], class_names, digits=2), fontsize=8)
    fig.suptitle(f"{title}\nGrad-CAM of the predicted class at {explained.layer}", fontsize=9)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


def caption(probabilities: np.ndarray, class_names: tuple[str, ...], *, digits: int) -> str:
    """What one model output says: "P(fake) 0.93" for a binary model, else its most probable class."""
    if len(probabilities) <= 2:  # binary: one sigmoid P(fake), or softmax (real, fake)
        return f"P(fake) {probabilities[-1]:.{digits}f}"
    best = int(probabilities.argmax())
    return f"P({class_names[best]}) {probabilities[best]:.{digits}f}"


def overlay_png(image: np.ndarray, heatmap: np.ndarray, path) -> None:
    """The image (enlarged 8x) and its heatmap, side by side with the overlay, as one PNG."""
    from PIL import Image

    scale = 8
    plain = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    both = np.concatenate([plain, overlay(image, heatmap, scale=scale)], axis=1)
    Image.fromarray(both).save(path, format="PNG")
