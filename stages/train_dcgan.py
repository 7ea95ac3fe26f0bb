"""Stage `train_dcgan`: train the reference study's DCGAN on CIFAKE train/REAL images; save the generator, sample grids,
per-epoch losses and the quality curve. A run killed mid-training continues after its last finished epoch on the next
`dvc repro`; `dcgan.max_train_minutes` ends it at the first epoch whose successor would pass the budget.

Quality is the Frechet distance and diversity ratio of generated images against CIFAKE test/REAL images, in the
penultimate-layer features of the pipeline's trained detector `models/<dcgan.quality_model>.keras`. The test images
are read for this reported measurement only: it never selects anything (no early stopping, no choice of epoch).
"""

import shutil
import time

import numpy as np

from realfake.data import generated
from realfake.fileio import write_json
from realfake.models.saving import load_model
from realfake.params import load_params
from realfake.pipeline import stage, tracking
from realfake.training import gan_report
from realfake.training.gan import QUALITY_KEYS, QualityProbe, real_test_images, train_dcgan
from realfake.training.state import fingerprint


def log_record(entry: dict) -> None:
    keys = ("d_loss", "g_loss", *(k for k in QUALITY_KEYS if k in entry))
    tracking.log_metrics({k: entry[k] for k in keys}, step=entry["epoch"])


def main(paths, args) -> None:
    started = time.perf_counter()
    params = load_params(args.params, sections=["base", "dcgan"])
    dcgan, seed = params.dcgan, params.base.seed
    with tracking.stage_run("train_dcgan", repo_root=paths.root, experiment=params.base.mlflow_experiment,
                            params={"seed": seed, "dcgan": params.raw["dcgan"]}):  # fmt: skip
        raw = stage.load_raw(paths)
        images = generated.dcgan_training_images(raw, count=dcgan.max_images, seed=seed, source=paths.raw_dataset)
        detector_file = paths.model_file(dcgan.quality_model)
        detector = load_model(detector_file, rebuild_with=f"dvc repro train@{dcgan.quality_model}")
        reference = real_test_images(raw, count=dcgan.quality_images, seed=seed)  # measured against, never chosen by
        probe = QualityProbe(detector, reference, noise_dim=dcgan.noise_dim, seed=seed)
        tracking.log_metrics({"frechet_distance_real_vs_real": probe.real_vs_real})
        key = fingerprint(dcgan, seed, arrays=[images, reference, np.fromfile(detector_file, np.uint8)])
        state_dir = paths.state / "train_dcgan" / key  # a retrained detector measures differently: start over
        result = train_dcgan(images, state_dir, dcgan=dcgan, seed=seed, on_record=log_record, probe=probe)
        tracking.log_metrics(result.untrained, step=0)
        samples = gan_report.write_outputs(result, model_file=paths.model_file("dcgan_generator"),
                                           plots=paths.plots / "dcgan", dcgan=dcgan, seed=seed)  # fmt: skip
        metrics = gan_report.summary(result, probe, train_images=len(images), feature_model=dcgan.quality_model,
                                     wall_seconds=time.perf_counter() - started, fingerprint=key)  # fmt: skip
        write_json(paths.metrics / "dcgan.json", metrics)
        tracking.set_tags(metrics, prefix="summary.")
        tracking.log_artifacts(paths.metrics / "dcgan.json", paths.model_file("dcgan_generator"))
        tracking.log_artifacts(samples, artifact_path="dcgan/samples")
        shutil.rmtree(state_dir)  # the outputs are complete: a rerun must train afresh


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
