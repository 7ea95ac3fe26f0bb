"""`realfake explain IMAGE`: a Grad-CAM heatmap of where a model looked. Unlike predict it needs the Keras model
(a .keras file, the default shipped detector's by default) and so loads TensorFlow."""

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


def figure_png(pixels, heatmap, path: Path, *, title: str) -> None:
    """Three panels: the image (as the model saw it, enlarged), the heatmap over a faded copy, and the heatmap alone
    with its colour bar; `title` says the image, the call, P(fake) and the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=100)
    axes[0].imshow(pixels, interpolation="nearest")
    axes[0].set_title("image (as the model sees it)", fontsize=8)
    axes[1].imshow(pixels, interpolation="nearest", alpha=0.7)
    axes[1].imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear")
    axes[1].set_title("Grad-CAM over the image", fontsize=8)
    shown = axes[2].imshow(heatmap, cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
    axes[2].set_title("Grad-CAM alone", fontsize=8)
    bar = fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    bar.set_label("share of the strongest evidence", fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)


def run_explain(args: argparse.Namespace) -> int:
    from realfake.serving import images, models

    if args.output and len(args.images) > 1:
        cli._say("--output names one file: give one IMAGE, or leave --output out (each IMAGE gets IMAGE.gradcam.png)")
        return cli.EXIT_FAILED
    models.quiet_keras()
    from realfake.evaluation import explain

    root = args.repo.resolve() if args.repo else models.find_repo_root(Path.cwd())
    min_size = repo_setting(root, "explain", "min_feature_size", fallback=FALLBACK_MIN_FEATURE_SIZE, hint="pass --repo")
    loaded = cli.load_model(args, root, keras=True)
    names, explained, skipped = loaded.engine.class_names, 0, 0
    for image in args.images:
        try:
            pixels, _ = images.load_image(image, size=loaded.engine.size, max_pixels=images.MAX_PIXELS)
        except images.UnreadableImageError as exc:
            cli._say(f"{image}: {exc}")
            skipped += 1
            continue
        result = explain.gradcam(loaded.model, pixels[None], min_size=min_size, threshold=loaded.threshold)
        output = args.output or Path(f"{image.name}.gradcam.png")
        said = explain.caption(result.probabilities[0], names, digits=4)
        called = names[int(result.class_index[0])]
        title = f"{image.name}: called {called}, {said} (threshold {loaded.threshold:g}; {loaded.name})"
        figure_png(pixels, result.heatmaps[0], output, title=title)
        cli._write(sys.stdout, f"{output}\t{called}\t{said}\t{loaded.name}\tlayer {result.layer}\n")
        explained += 1
    if skipped:  # as predict: 1 = some files skipped, 2 = nothing explained
        return cli.EXIT_SKIPPED if explained else cli.EXIT_FAILED
    return cli.EXIT_OK
