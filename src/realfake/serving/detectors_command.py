"""`realfake detectors`: the detectors shipped inside the package, the default first, with their measured accuracy
(from each one's card)."""

from __future__ import annotations

import argparse


def run_detectors(args: argparse.Namespace) -> int:
    from realfake.serving import models

    default = models.default_shipped_name()
    rows = [("--model", "default", "model", "test accuracy", "ROC-AUC", "robust accuracy")]
    for name in models.shipped_names():
        card = models.shipped_detector(name).card
        scores = (
            card.get("test", {}).get("accuracy"),
            card.get("test", {}).get("roc_auc"),
            card.get("robust_accuracy"),
        )
        marker = "yes" if name == default else ""
        cells = [f"{v:.4f}" if isinstance(v, (int, float)) else "-" for v in scores]
        rows.append((f"{models.SHIPPED_PREFIX}:{name}", marker, card.get("model_section", "?"), *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"(CIFAKE test split, from each one's card in {models.SHIPPED})")
    return 0
