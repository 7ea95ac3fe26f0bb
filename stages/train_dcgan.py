"""Stage `train_dcgan`: train the reference study's DCGAN on CIFAKE train/REAL images; save the generator, sample grids,
per-epoch losses and the quality curve. A run killed mid-training continues after its last finished epoch on the next
`dvc repro`; `dcgan.max_train_minutes` ends it at the first epoch whose successor would pass the budget.

Quality is the Frechet distance and diversity ratio of generated images against CIFAKE test/REAL images, in the
penultimate-layer features of the pipeline's trained detector `models/<dcgan.quality_model>.keras`. The test images
are read for this reported measurement only: it never selects anything (no early stopping, no choice of epoch).
"""

import csv
import os
import shutil
import time

import numpy as np

from realfake.data import generated
from realfake.data.cifake import RawDataset
from realfake.errors import DataError
from realfake.fileio import atomic_path, load_arrays, write_json
from realfake.models.saving import load_model
from realfake.params import load_params
from realfake.pipeline import stage, tracking
from realfake.training.gan import QUALITY_KEYS, QualityProbe, real_test_images, train_dcgan, write_grid
from realfake.training.state import fingerprint


def log_record(entry: dict) -> None:
    keys = ("d_loss", "g_loss", *(k for k in QUALITY_KEYS if k in entry))
    tracking.log_metrics({k: entry[k] for k in keys}, step=entry["epoch"])


def main(paths, args) -> None:
    started = time.perf_counter()
    params = load_params(args.params, sections=["base", "dcgan"])
    dcgan, seed = params.dcgan, params.base.seed
    section = {"seed": seed, "dcgan": params.raw["dcgan"]}
    with tracking.stage_run(
        "train_dcgan", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section
    ):
        if not paths.raw_dataset.exists():
            raise DataError(f"{paths.raw_dataset}: decoded CIFAKE not found; run `dvc repro download` first")
        raw = RawDataset.from_arrays(load_arrays(paths.raw_dataset))
        images = generated.real_train_images(raw)  # train/REAL only, never test
        images = generated.sample_images(images, count=dcgan.max_images, seed=seed)
        if not len(images):
            raise DataError(f"{paths.raw_dataset}: holds no train/REAL images to train the DCGAN on")
        detector_file = paths.model_file(dcgan.quality_model)
        detector = load_model(detector_file, rebuild_with=f"dvc repro train@{dcgan.quality_model}")
        reference = real_test_images(raw, count=dcgan.quality_images, seed=seed)  # measured against, never chosen by
        probe = QualityProbe(detector, reference, noise_dim=dcgan.noise_dim, seed=seed)
        tracking.log_metrics({"frechet_distance_real_vs_real": probe.real_vs_real})
        state_dir = (
            paths.state
            / "train_dcgan"
            / fingerprint(dcgan, seed, arrays=[images, reference, np.fromfile(detector_file, np.uint8)])
        )  # a retrained detector measures differently: start over
        result = train_dcgan(images, state_dir, dcgan=dcgan, seed=seed, on_record=log_record, probe=probe)
        tracking.log_metrics(result.untrained, step=0)

        model_file = paths.model_file("dcgan_generator")
        with atomic_path(model_file) as tmp:
            result.generator.save(tmp)
        samples = paths.plots / "dcgan" / "samples"  # replaced on its own: plots/dcgan also holds DVC's .gitignore
        with atomic_path(samples, is_dir=True) as folder:
            if result.samples.exists():
                shutil.copytree(result.samples, folder, dirs_exist_ok=True)
            write_grid(result.generator, folder / "final.png", dcgan=dcgan, seed=seed)
        history = result.history
        with atomic_path(paths.plots / "dcgan" / "losses.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["epoch", "d_loss", "g_loss"])
            writer.writerows([e["epoch"], e["d_loss"], e["g_loss"]] for e in history)
        curve = [{"epoch": 0, **result.untrained}, *(e for e in history if QUALITY_KEYS[0] in e)]
        with atomic_path(paths.plots / "dcgan" / "quality.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["epoch", *QUALITY_KEYS])  # epoch 0: the untrained generator
            writer.writerows([e["epoch"], *(e[k] for k in QUALITY_KEYS)] for e in curve)
        train_seconds = sum(e["train_seconds"] for e in history)
        metrics = {
            "train_images": len(images),
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
                "feature_model": dcgan.quality_model,
                "features": int(probe.reference.shape[1]),
            },
            "train_seconds": train_seconds,  # epochs only (first includes tracing), summed over resumed calls
            "images_per_s": len(images) * len(history) / train_seconds,
            "wall_seconds": time.perf_counter() - started,  # this call, from loading params to the last output
            "resumed_epochs": result.resumed_epochs,  # epochs carried over from an interrupted run (0 = fresh start)
            "cpu_count": os.cpu_count(),
        }
        write_json(paths.metrics / "dcgan.json", metrics)
        tracking.set_tags(metrics, prefix="summary.")
        tracking.log_artifacts(paths.metrics / "dcgan.json", model_file)
        tracking.log_artifacts(samples, artifact_path="dcgan/samples")
        shutil.rmtree(state_dir)  # the outputs are complete: a rerun must train afresh


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
