"""Stage `generate`: seeded DCGAN fakes for training and testing, stored as CIFAKE stores its images (JPEG,
quality 75, 4:2:0) in one zip, and decoded back from those JPEG bytes into uint8 arrays for the classifiers.

Noise seeds: train images use base.seed, test images base.seed + 1, so the two sets never share a noise vector.
"""

import logging

import numpy as np

from realfake.data import generated as generation
from realfake.fileio import atomic_path, save_arrays, write_json
from realfake.models.dcgan import generate_images, load_generator
from realfake.params import load_params
from realfake.pipeline import stage, tracking

log = logging.getLogger("realfake.stages.generate")


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "generate"])
    g, seed = params.generate, params.base.seed
    section = {"seed": seed, "generate": params.raw["generate"]}
    with tracking.stage_run("generate", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section):
        generator = load_generator(paths.model_file("dcgan_generator"))
        noise_dim = int(generator.inputs[0].shape[-1])
        counts, seeds = {"train": g.n_train, "test": g.n_test}, {"train": seed, "test": seed + 1}
        jpegs: dict[str, list[bytes]] = {}
        report: dict = {"jpeg": {"quality": g.jpeg_quality, "subsampling": g.jpeg_subsampling}}
        for split, count in counts.items():
            images = generate_images(generator, count=count, noise_dim=noise_dim, seed=seeds[split],
                                     batch_size=g.batch_size)  # fmt: skip
            jpegs[split], stored, report[split] = generation.store_like_cifake(
                images, quality=g.jpeg_quality, subsampling=g.jpeg_subsampling
            )
            report[split]["noise_seed"] = seeds[split]
            save_arrays(paths.generated_split(split), images=stored)
            log.info("%s: %d images, %.0f bytes per JPEG", split, count, report[split]["mean_bytes"])
        report["mean_bytes"] = float(np.mean([len(b) for blobs in jpegs.values() for b in blobs]))
        members = ((generation.member_name(s, i), data) for s, blobs in jpegs.items() for i, data in enumerate(blobs))
        with atomic_path(paths.generated_jpegs) as tmp:
            generation.write_zip(tmp, members)
        write_json(paths.metrics / "generate.json", report)
        tracking.log_metrics(report)
        tracking.log_artifacts(paths.metrics / "generate.json")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
