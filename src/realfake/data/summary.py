"""What a decoded CIFAKE archive holds: counts per split and class, and its pixel-identical duplicates."""

from __future__ import annotations

import numpy as np

from realfake.data.cifake import CLASSES, SPLITS, RawDataset


def summarize(raw: RawDataset) -> dict:
    """Counts per split and class, and pixel-identical duplicates: within a folder, across classes, train-test."""
    digests = raw.digests
    counts = {split: {c: raw.count(split, c) for c in CLASSES} for split in SPLITS}
    duplicates = {}
    for s, split in enumerate(SPLITS):
        for c, cls_name in enumerate(CLASSES):
            group = digests[(raw.split == s) & (raw.label == c)]
            duplicates[f"{split}/{cls_name}"] = int(len(group) - len(np.unique(group)))
    train = set(digests[raw.split == 0])
    test = set(digests[raw.split == 1])
    real = set(digests[raw.label == 0])
    fake = set(digests[raw.label == 1])
    return {
        "images": int(len(raw.images)),
        "counts": counts,
        "duplicates": {
            "extra_copies_within_folder": duplicates,
            "train_test_overlap": len(train & test),
            "real_fake_overlap": len(real & fake),
        },
    }
