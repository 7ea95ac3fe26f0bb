"""Pixel-moving image transforms as permutation tables: the square's symmetries and whole-pixel shifts.

Training's on-the-fly augmentation (`training.inputs.Batches`) and the fast detector's test-time augmentation
(`models.layers.TTAViews`) draw from the same tables, so a model is scored on exactly the kinds of views it was
trained on. Pure NumPy: no backend needed.
"""

import numpy as np


def pixel_permutations(height: int, width: int, augment: tuple[str, ...], max_shift: int) -> np.ndarray:
    """(T, height*width) int32: for each allowed transform, the source pixel of every output pixel.

    The symmetries form the dihedral subgroup that `augment` generates: hflip -> {identity, mirror},
    rot90 -> the 4 quarter turns, both -> all 8 symmetries of the square. `max_shift` > 0 follows each with every
    whole-pixel translation by up to that many pixels in y and x, the image mirrored at its borders to fill the
    gap. Only pixel moves: interpolating transforms would blur the high-frequency traces that tell generated images
    from photos. Order: shifts (dy, then dx, from -max_shift up), and within each shift the symmetries.
    """
    grid = np.arange(height * width).reshape(height, width)
    symmetric = [np.rot90(grid[:, ::-1] if flip else grid, k).reshape(-1) for flip, k in symmetries(augment)]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    tables = []
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            source = (_mirror(rows + dy, height) * width + _mirror(cols + dx, width)).reshape(-1)
            tables += [table[source] for table in symmetric]
    return np.stack(tables).astype(np.int32)


def _mirror(position: np.ndarray, size: int) -> np.ndarray:
    """Positions reflected back into [0, size) at the edges, the edge pixel not repeated (numpy's "reflect")."""
    position = np.abs(position)
    return np.where(position >= size, 2 * (size - 1) - position, position)


def symmetries(augment: tuple[str, ...]) -> list[tuple[bool, int]]:
    """(mirror first, quarter turns) of each transform in the group `augment` generates (identity first)."""
    flips = (False, True) if "hflip" in augment else (False,)
    turns = range(4) if "rot90" in augment else (0,)
    return [(flip, k) for flip in flips for k in turns]
