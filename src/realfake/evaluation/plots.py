"""Figures only a picture can show (curves and confusion matrices go to DVC as data, not images).

Drawn on matplotlib's Agg canvas directly, never through pyplot: no global figure state, no display needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def heatmap_png(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    path_or_fileobj: str | BinaryIO,
) -> None:
    """Write a PNG heatmap of shares in [0, 1], each cell annotated with its value ("n/a" for NaN)."""
    values = np.asarray(matrix, dtype=np.float64)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix shape {values.shape} does not match {len(row_labels)} row labels "
            f"and {len(col_labels)} column labels"
        )
    fig = Figure(figsize=(2.0 + 1.4 * len(col_labels), 1.4 + 0.6 * len(row_labels)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # A fixed 0..1 scale keeps colours comparable between figures and experiments.
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=[str(label) for label in col_labels], rotation=20, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=[str(label) for label in row_labels])
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(values):
        missing = np.isnan(value)
        # Black on viridis' bright end and on blank (masked) cells, white on its dark end.
        colour = "black" if missing or value > 0.6 else "white"
        ax.text(j, i, "n/a" if missing else f"{value:.3f}", ha="center", va="center", color=colour)
    fig.colorbar(image, ax=ax)
    # No "Software" tag: a matplotlib upgrade alone should not change the file that DVC tracks.
    fig.savefig(path_or_fileobj, format="png", dpi=120, metadata={"Software": None})
    log.debug("wrote heatmap %r (%d x %d)", title, *values.shape)
