"""Stage `train_dcgan`: train the reference study's DCGAN on CIFAKE train/REAL images; save the generator, sample grids
and per-epoch losses. A run killed mid-training continues after its last finished epoch on the next `dvc repro`."""

import csv
import os
import shutil
import time

from realfake.data import generated
from realfake.data.cifake import RawDataset
from realfake.errors import DataError
from realfake.fileio import atomic_path, load_arrays, write_json
from realfake.params import load_params
from realfake.pipeline import stage, tracking
from realfake.training.gan import train_dcgan, write_grid
from realfake.training.state import fingerprint


def log_losses(entry: dict) -> None:
    tracking.log_metrics({k: entry[k] for k in ("d_loss", "g_loss")}, step=entry["epoch"])


def main(paths, args) -> None:
    started = time.perf_counter()
    params = load_params(args.params, sections=["base", "dcgan"])
    dcgan, seed = params.dcgan, params.base.seed
    section = {"seed": seed, "dcgan": params.raw["dcgan"]}
    with tracking.stage_run(
        "train_dcgan", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section
    ):
        # train/REAL only, never test
        if not paths.raw_dataset.exists():
            raise DataError(f"{paths.raw_dataset}: decoded CIFAKE not found; run `dvc repro download` first")
        images = generated.real_train_images(RawDataset.from_arrays(load_arrays(paths.raw_dataset)))
        images = generated.sample_images(images, count=dcgan.max_images, seed=seed)
        if not len(images):
            raise DataError(f"{paths.raw_dataset}: holds no train/REAL images to train the DCGAN on")
        state_dir = paths.state / "train_dcgan" / fingerprint(dcgan, seed, arrays=[images])
        result = train_dcgan(images, state_dir, dcgan=dcgan, seed=seed, on_record=log_losses)

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
        train_seconds = sum(e["train_seconds"] for e in history)
        metrics = {
            "train_images": len(images),
            "epochs": len(history),
            "final": {"d_loss": history[-1]["d_loss"], "g_loss": history[-1]["g_loss"]},
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
