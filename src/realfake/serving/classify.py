"""Classifying decoded images: P(fake), the label at a threshold, whether the image was resampled, and its
out-of-distribution verdict; a bounded batch at a time, so memory does not grow with the number of files.

The two flags are independent. `resampled`: the image was not the model's 32x32 and was cropped and resized (the
detector was trained on CIFAKE's native 32x32 images; the warning cites its measured accuracy on resized images).
`ood`: the image's features lie further from the training images' than the cutoff stored with the model (a
percentile of the validation images' scores), so its verdict is unreliable."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from realfake.serving.images import UnreadableImageError, batches, display_path, load_image
from realfake.serving.models import LoadedModel


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str  # as given, undecodable bytes of the file name written as \\xNN
    p_fake: float
    label: str
    model: str
    resampled: bool  # the image was not the model's size and was cropped and resized to it
    ood: bool | None  # out of distribution (verdict unreliable); None when the model has no OOD statistics
    ood_score: float | None  # distance from the training images' features; None without OOD statistics


def labels_at(probabilities: np.ndarray, names: Sequence[str], threshold: float) -> list[str]:
    """Thresholded P(fake) for a binary model; the most probable class for more classes (threshold unused)."""
    if probabilities.shape[1] == 2:
        return [names[int(p >= threshold)] for p in 1.0 - probabilities[:, 0]]
    return [names[int(i)] for i in np.argmax(probabilities, axis=1)]


def score_pixels(
    loaded: LoadedModel, names: Sequence[str], pixels: Sequence[np.ndarray], resampled: Sequence[bool], *,
    threshold: float,
) -> list[Prediction]:  # fmt: skip
    """Predictions for already decoded images (`names` shown as their paths)."""
    if not pixels:
        return []
    info = loaded.info
    probabilities, features = loaded.engine.score(np.stack(pixels), features=info is not None)
    p_fake = 1.0 - probabilities[:, 0]
    labels = labels_at(probabilities, loaded.engine.class_names, threshold)
    if info is not None:
        from realfake.serving.engines import ood_scores

        distances = [float(d) for d in ood_scores(features, info.ood_means, info.ood_precision)]
    else:
        distances = [None] * len(pixels)
    out = []
    for name, p, label, changed, d in zip(names, p_fake, labels, resampled, distances, strict=True):
        ood = None if d is None else bool(d > info.ood_cutoff)
        out.append(Prediction(name, float(p), label, loaded.name, bool(changed), ood, d))
    return out


def classify(
    loaded: LoadedModel, paths: Sequence[Path], *, batch_size: int, threshold: float, max_pixels: int,
    on_skip: Callable[[Path, str], None], progress: bool = True,
) -> Iterator[list[Prediction]]:  # fmt: skip
    """The predictions of `paths`, one list per batch of `batch_size` files (decoded and scored together);
    unreadable files go to `on_skip(path, why)`. A progress bar shows on stderr when there are several batches."""
    from tqdm import tqdm

    quiet = not progress or len(paths) <= batch_size
    with tqdm(total=len(paths), unit="image", file=sys.stderr, disable=quiet) as bar:
        try:
            yield from _batches(loaded, paths, batch_size, threshold, max_pixels, on_skip, bar)
        except BaseException:  # Ctrl-C, or the consumer gone: clear the bar rather than leave it half drawn
            bar.leave = False
            raise


def _batches(loaded, paths, batch_size, threshold, max_pixels, on_skip, bar) -> Iterator[list[Prediction]]:
    """`classify`'s batches, `bar` updated after each."""
    size = loaded.engine.size
    for batch in batches(paths, batch_size):
        shown, pixels, resampled = [], [], []
        for path in batch:
            try:
                image, changed = load_image(path, size=size, max_pixels=max_pixels)
            except UnreadableImageError as exc:
                on_skip(path, str(exc))
                continue
            shown.append(display_path(path))
            pixels.append(image)
            resampled.append(changed)
        yield score_pixels(loaded, shown, pixels, resampled, threshold=threshold)
        bar.update(len(batch))
