"""Stage `export@<model>`: the trained model as ONNX (models/<model>.onnx), so that `realfake predict` and `realfake
serve` run it without TensorFlow.

The graph gives P(fake), the class probabilities and the features the out-of-distribution score reads; its metadata
holds the SHA-256 of the .keras file. Before the file is kept, the export is held to Keras on seeded images: P(fake)
within 1e-5, and features whose width is that of the OOD statistics in models/<model>.detector.npz, when there is one.
The kept file is registered in MLflow (onnx flavour) as <registered_model_prefix><model>-onnx.
"""

import logging

import numpy as np

from realfake.errors import DataError
from realfake.models.detector import info_path, load_info
from realfake.models.onnx_export import check_parity, export_onnx
from realfake.params import load_params
from realfake.pipeline import model_registry, stage, tracking

log = logging.getLogger("realfake.export")
TOLERANCE = 1e-5  # largest |P(fake) difference| accepted between the ONNX graph and the Keras model
PROBES = 32  # seeded random images the export is checked on


def main(paths, args) -> None:
    name = args.model
    base = load_params(args.params, sections=["base"]).base
    source, target = paths.model_file(name), paths.models / f"{name}.onnx"
    with tracking.stage_run("export", repo_root=paths.root, experiment=base.mlflow_experiment, params={"model": name},
                            run_name=f"export@{name}"):  # fmt: skip
        export(source, target)
        extras = info_path(source)
        model_registry.log_registered_onnx(
            target, registered_name=f"{base.registered_model_prefix}{name}{model_registry.ONNX_SUFFIX}",
            extra_artifacts={"detector": extras} if extras.is_file() else None,
        )  # fmt: skip


def export(source, target) -> None:
    """Write `target` from `source`, held to it on seeded probes; nothing is kept that fails the checks."""
    metadata = export_onnx(source, target)
    probes = np.random.default_rng(0).integers(0, 256, (PROBES, 32, 32, 3), dtype=np.uint8)
    diffs = check_parity(source, target, probes)
    if diffs["p_fake"] > TOLERANCE:
        target.unlink()
        raise DataError(f"{target}: P(fake) differs from {source} by {diffs['p_fake']:.2e} (> {TOLERANCE}); not kept")
    extras = info_path(source)
    if extras.is_file() and load_info(extras).ood_means.shape[1] != diffs["features_width"]:
        target.unlink()
        raise DataError(f"{target}: {diffs['features_width']} features, but {extras} was fitted on another width")
    log.info("%s: exported from %s (sha256 %s); largest |dP(fake)| %.1e, |dfeature| %.1e on %d probes", target,
             source, metadata["realfake.source_sha256"][:12], diffs["p_fake"], diffs["features"], PROBES)  # fmt: skip


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__, extra_args=stage.model_arg)
