"""What the `train_dcgan` stage keeps of a finished `gan.train_dcgan`: the generator, its sample grids, the loss and
quality curves and the summary of metrics/dcgan.json."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from realfake.fileio import atomic_path, write_csv
from realfake.params import DcganParams
from realfake.training.gan import QUALITY_KEYS, GanResult, QualityProbe, write_grid


def write_outputs(result: GanResult, *, model_file: Path, plots: Path, dcgan: DcganParams, seed: int) -> Path:
    """The generator (.keras) and, in `plots`, the sample-grid folder `samples/` (the grids made while training and
    `final.png`), the per-epoch `losses.csv` and the quality curve `quality.csv` (epoch 0: the untrained generator),
    each written atomically; returns the samples folder. That folder is replaced on its own, not `plots`: DVC keeps
    a .gitignore there."""
    with atomic_path(model_file) as tmp:
        result.generator.save(tmp)
    samples = plots / "samples"
    with atomic_path(samples, is_dir=True) as folder:
        if result.samples.exists():
            shutil.copytree(result.samples, folder, dirs_exist_ok=True)
        write_grid(result.generator, folder / "final.png", dcgan=dcgan, seed=seed)
    losses = ([e["epoch"], e["d_loss"], e["g_loss"]] for e in result.history)
    write_csv(plots / "losses.csv", ["epoch", "d_loss", "g_loss"], losses)
    curve = [{"epoch": 0, **result.untrained}, *(e for e in result.history if QUALITY_KEYS[0] in e)]
    write_csv(
        plots / "quality.csv", ["epoch", *QUALITY_KEYS], ([e["epoch"], *(e[k] for k in QUALITY_KEYS)] for e in curve)
    )
    return samples


def summary(result: GanResult, probe: QualityProbe, *, train_images: int, feature_model: str, wall_seconds: float,
            fingerprint: str) -> dict:  # fmt: skip
    """metrics/dcgan.json: training extent and speed, final losses, and the quality of the last epoch against the
    untrained generator and against real images; `fingerprint` names the params and data it trained with."""
    history = result.history
    train_seconds = sum(e["train_seconds"] for e in history)
    return {
        "train_images": train_images,
        "epochs": len(history),
        "stopped_by_budget": result.stopped_by_budget,  # before dcgan.epochs, by dcgan.max_train_minutes
        "final": {"d_loss": history[-1]["d_loss"], "g_loss": history[-1]["g_loss"]},
        "quality": {
            "frechet_distance": history[-1]["frechet_distance"],  # the last epoch is always measured
            "diversity_ratio": history[-1]["diversity_ratio"],
            "frechet_distance_untrained": result.untrained["frechet_distance"],
            "diversity_ratio_untrained": result.untrained["diversity_ratio"],
            "frechet_distance_real_vs_real": probe.real_vs_real,  # two disjoint sets of real test images
            "images_per_set": probe.count,  # generated and real test images in every distance
            "feature_model": feature_model,
            "features": int(probe.reference.shape[1]),
        },
        "train_seconds": train_seconds,  # epochs only (first includes tracing), summed over resumed calls
        "images_per_s": train_images * len(history) / train_seconds,
        "wall_seconds": wall_seconds,  # the stage's call, from loading params to the last output
        "resumed_epochs": result.resumed_epochs,  # epochs carried over from an interrupted run (0 = fresh start)
        "cpu_count": os.cpu_count(),
        "training_fingerprint": fingerprint,  # dcgan params, seed, images and the feature model (training.state)
    }
