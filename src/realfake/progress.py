"""Progress bars for batch loops a person waits on (scoring a split, embedding it for the OOD statistics).

A bar shows only on a terminal and only for more than one batch, so logs written to files (CI, `nohup dvc repro`)
stay one line per event. TQDM_DISABLE=1 turns every bar off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm


def batch_starts(total: int, batch_size: int, *, desc: str, file: TextIO | None = None) -> Iterator[int]:
    """The start index of each batch of `batch_size` in `total` items, with a progress bar counting items."""
    file = file or sys.stderr
    several = total > batch_size
    with tqdm(total=total, desc=desc, unit="img", mininterval=1, leave=False, file=file,
              disable=None if several else True) as bar:  # fmt: skip
        for start in range(0, total, batch_size):
            yield start
            bar.update(min(batch_size, total - start))
