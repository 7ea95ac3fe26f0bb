"""`realfake explain IMAGE`: a Grad-CAM heatmap of where a model looked. Unlike predict it needs the Keras model
(a .keras file, the shipped fast.keras by default) and so loads TensorFlow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from realfake.errors import ParamsError
from realfake.serving import cli

# Only when there is no params.yaml to take explain.min_feature_size from: at 32x32 input, 4 px is the smallest map
# that still localises anything.
FALLBACK_MIN_FEATURE_SIZE = 4


def repo_setting(root: Path, section: str, key: str, *, fallback, hint: str):
    """`section.key` of the repo's params.yaml (its one home); `fallback` when there is no params.yaml."""
    from realfake.params import load_params

    params_file = root / "params.yaml"
    if not params_file.is_file():
        return fallback
    try:
        return getattr(getattr(load_params(params_file, sections=[section]), section), key)
    except ParamsError as exc:
        raise ParamsError(f"{exc} (reading {section}.{key}; {hint})") from None


def run_explain(args: argparse.Namespace) -> int:
    from realfake.serving import images, models

    models.quiet_keras()
    from realfake.evaluation import explain

    root = args.repo.resolve() if args.repo else models.find_repo_root(Path.cwd())
    min_size = repo_setting(root, "explain", "min_feature_size", fallback=FALLBACK_MIN_FEATURE_SIZE, hint="pass --repo")
    loaded = cli.load_model(args, root, keras=True)
    try:
        pixels, _ = images.load_image(args.image, size=loaded.engine.size, max_pixels=images.MAX_PIXELS)
    except images.UnreadableImageError as exc:
        cli._say(f"{args.image}: {exc}")
        return cli.EXIT_FAILED
    result = explain.gradcam(loaded.model, pixels[None], min_size=min_size, threshold=loaded.threshold)
    output = args.output or Path(f"{args.image.name}.gradcam.png")
    explain.overlay_png(pixels, result.heatmaps[0], output)
    names = loaded.engine.class_names
    said = explain.caption(result.probabilities[0], names, digits=4)
    called = names[int(result.class_index[0])]
    cli._write(sys.stdout, f"{output}\t{called}\t{said}\t{loaded.name}\tlayer {result.layer}\n")
    return cli.EXIT_OK
