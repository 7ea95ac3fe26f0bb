"""The `realfake` command tells real photos from AI-generated images: `realfake predict PATH...` classifies image
files and folders; `realfake explain IMAGE` shows where a model looked (Grad-CAM).

Exit status: 0 every image was classified; 1 some files were skipped (listed on stderr as "path: reason") but
others were classified; 2 usage error, no readable image, or a model that cannot be found or loaded; 3 the results
could not be written (the reader of a pipe went away, a full disk, a closed stdout); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from realfake.errors import ParamsError, RealfakeError

# When the model stores no threshold of its own: for calibrated probabilities 0.5 is the point that minimises errors.
FALLBACK_THRESHOLD = 0.5
# Likewise for explain.min_feature_size: at 32x32 input, 4 px is the smallest map that still localises anything.
FALLBACK_MIN_FEATURE_SIZE = 4

EXIT_OK, EXIT_SKIPPED, EXIT_FAILED, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class OutputError(Exception):
    """The results could not be written to stdout."""


def _emit(text: str) -> None:
    """Write results to stdout, flushed now, so that a closed pipe or a full disk is found here, not at exit."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise OutputError("stdout is closed")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputError("the reader of stdout went away") from None
    except OSError as exc:
        raise OutputError(f"cannot write to stdout: {exc.strerror or exc}") from None


def _say(message: str) -> None:
    """A line for the user on stderr: stdout carries only the results, so they can be piped."""
    print(message, file=sys.stderr)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realfake",
        description="Tell real photos from AI-generated images (a detector trained on CIFAKE's 32x32 images).",
        epilog="`realfake COMMAND --help` describes a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="classify image files or folders as real or fake",
        description="Classify images as real or AI-generated. Images are converted to RGB (transparency over "
        "white), centre-cropped to square and resized to the model's 32x32 with LANCZOS; 32x32 images are used "
        "as decoded. Unreadable files are listed on stderr and skipped.",
        epilog="exit status: 0 every image classified; 1 some files skipped, others classified; 2 usage error, "
        "no readable image, or a model that cannot be found or loaded",
    )
    predict.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="image files, or folders searched recursively for jpg/jpeg/png/webp/bmp/gif/tif/tiff",
    )
    predict.add_argument(
        "--model",
        help="a .keras file or an MLflow URI (models:/NAME/VERSION, models:/NAME@champion, runs:/RUN_ID/PATH); "
        "default: the binary model of the repo's last pipeline run with the highest validation accuracy, else the "
        "detector shipped with realfake",
    )
    predict.add_argument(
        "--repo", type=Path, help="the pipeline repo (default: the nearest folder at or above this one with dvc.yaml)"
    )
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output (default: table)")
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        help="images decoded and scored at a time (default: %(default)s)",
    )
    decision = predict.add_mutually_exclusive_group()
    decision.add_argument(
        "--threshold",
        type=_fraction,
        help="P(fake) at or above which an image is called fake (default: the threshold stored with the model, "
        f"else {FALLBACK_THRESHOLD}, the error-minimising point of its calibrated probability)",
    )
    decision.add_argument(
        "--max-fpr",
        type=_fraction,
        metavar="RATE",
        help="use the threshold stored with the model that flagged at most RATE of real validation images as fake "
        "(e.g. 0.01; the model's detector file lists the rates it has)",
    )
    predict.set_defaults(func=run_predict)

    explain = commands.add_parser(
        "explain",
        help="write a Grad-CAM heatmap of where a model looked in an image",
        description="Grad-CAM of the predicted class: the image (resized as `predict` does) enlarged 8x, next to "
        "it with the heatmap on top, as one PNG.",
    )
    explain.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    explain.add_argument("--model", help="as for predict (default: the best binary model of the last run)")
    explain.add_argument("--repo", type=Path, help="as for predict")
    explain.add_argument("--output", type=Path, help="the PNG to write (default: IMAGE's name + .gradcam.png, here)")
    explain.set_defaults(func=run_explain)
    return parser


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


def default_threshold(loaded) -> float:
    """The model's own decision threshold when its sidecar stores one, else 0.5: a calibrated P(fake)'s
    error-minimising point, the threshold the evaluate stage reports at. Never read from a params.yaml, which
    describes the pipeline, not the model in hand."""
    stored = getattr(loaded.info, "threshold", None) if loaded.info else None
    return FALLBACK_THRESHOLD if stored is None else float(stored)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("realfake")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _quiet_tensorflow() -> None:
    """Start Keras' backend with its C++ start-up lines (CUDA probing, CPU-feature notices) silenced: they would bury
    realfake's own messages. REALFAKE_NATIVE_LOGS=1 shows them."""
    from realfake import quiet_native_stderr

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_native_stderr():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # probes the GPUs now, while silenced


def choose_threshold(args: argparse.Namespace, loaded, root: Path) -> float:
    """--threshold, else the stored operating point --max-fpr names, else the model's default (`default_threshold`)."""
    from realfake.evaluation.thresholds import point_name

    if args.threshold is not None:
        return args.threshold
    if args.max_fpr is None:
        return default_threshold(loaded)
    points = loaded.info.operating_points if loaded.info else {}
    wanted = point_name(args.max_fpr)
    if wanted not in points:
        stored = ", ".join(f"{p['max_fpr']:g}" for p in points.values()) or "none"
        raise ParamsError(f"--max-fpr {args.max_fpr:g}: model {loaded.name} stores thresholds for rates {stored}")
    point = points[wanted]
    _say(f"realfake: threshold {point['threshold']:.4f}: flagged {point['fpr']:.2%} of real validation images "
         f"(at most {args.max_fpr:g}) and caught {point['recall']:.2%} of fakes")  # fmt: skip
    return point["threshold"]


def run_predict(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from PIL import Image

    from realfake.serving import predict

    Image.MAX_IMAGE_PIXELS = predict.MAX_PIXELS  # this process's own Pillow guard; load_image checks it too
    root = args.repo.resolve() if args.repo else predict.find_repo_root(Path.cwd())

    images, problems = predict.find_images(args.paths)
    for path, reason in problems:
        _say(f"{predict.display_path(path)}: {reason}")
    if not images:
        _say("realfake: no image files to classify")
        return EXIT_FAILED

    loaded = _load_model(args, root)
    threshold = choose_threshold(args, loaded, root)

    predictions, skipped = predict.classify(
        loaded, images, batch_size=args.batch_size, threshold=threshold, max_pixels=predict.MAX_PIXELS
    )
    for path, reason in skipped:
        _say(f"{predict.display_path(path)}: {reason}")
    if not predictions:
        _say("realfake: no readable image among the given files")
        return EXIT_FAILED
    _warn_about(predictions, loaded)
    _emit(predict.FORMATTERS[args.format](predictions))
    return EXIT_SKIPPED if problems or skipped else EXIT_OK


def _warn_about(predictions, loaded) -> None:
    """One line each when images were resized to the model's input, or lie outside the training distribution."""
    resized = sum(p.resampled for p in predictions)
    if resized:
        measured = (
            f"measured accuracy on CIFAKE images downscaled 2x and back: {loaded.resized_accuracy:.3f}"
            if loaded.resized_accuracy is not None
            else "its accuracy on resized images was not measured"
        )
        _say(f"realfake: warning: {resized} image(s) were not 32x32 and were resized; the detector was trained on "
             f"32x32 CIFAKE images ({measured}), so treat these verdicts with caution")  # fmt: skip
    outside = sum(bool(p.ood) for p in predictions)
    if outside:
        _say(f"realfake: warning: {outside} image(s) are out of distribution (far from every training image); "
             "their verdicts are unreliable")  # fmt: skip


def _store_uri(root: Path) -> str | None:
    """The MLflow store to read models:/ URIs from: MLFLOW_TRACKING_URI, else the repo's mlflow.db when there is one."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if (root / "mlflow.db").is_file():
        return f"sqlite:///{(root / 'mlflow.db').resolve()}"
    return None


def _load_model(args: argparse.Namespace, root: Path):
    from realfake.paths import ProjectPaths
    from realfake.serving import predict

    if args.model:
        return predict.load_named_model(args.model, tracking_uri=_store_uri(root))
    paths = ProjectPaths(root)
    if predict.has_pipeline_models(paths):
        loaded, accuracy = predict.best_binary_model(paths)
        _say(
            f"realfake: using model {loaded.name} ({loaded.source}, validation accuracy {accuracy:.4f}, the best "
            "binary model of this repository's pipeline; --model picks another)"
        )
        return loaded
    loaded = predict.shipped_model()
    _say(f"realfake: using the detector shipped with realfake ({loaded.source}; see MODEL_CARD.md beside it)")
    return loaded


def run_explain(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from realfake.evaluation import explain
    from realfake.serving import predict

    root = args.repo.resolve() if args.repo else predict.find_repo_root(Path.cwd())
    min_size = repo_setting(root, "explain", "min_feature_size", fallback=FALLBACK_MIN_FEATURE_SIZE, hint="pass --repo")
    loaded = _load_model(args, root)
    threshold = default_threshold(loaded)
    try:
        pixels, _ = predict.load_image(args.image, size=predict.input_size(loaded.model), max_pixels=predict.MAX_PIXELS)
    except predict.UnreadableImageError as exc:
        _say(f"{args.image}: {exc}")
        return EXIT_FAILED
    result = explain.gradcam(loaded.model, pixels[None], min_size=min_size, threshold=threshold)
    output = args.output or Path(f"{args.image.name}.gradcam.png")
    explain.overlay_png(pixels, result.heatmaps[0], output)
    names = predict.class_names(loaded.model)
    said = explain.caption(result.probabilities[0], names, digits=4)
    called = names[int(result.class_index[0])]
    _emit(f"{output}\t{called}\t{said}\t{loaded.name}\tlayer {result.layer}\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `realfake` console script; returns the exit status."""
    logging.basicConfig(
        level=os.environ.get("REALFAKE_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_FAILED
    try:
        return args.func(args)
    except RealfakeError as exc:
        _say(f"realfake: {exc}")
        return EXIT_FAILED
    except OutputError as exc:
        _quiet_stdout()
        _say(f"realfake: results not written: {exc}")
        return EXIT_OUTPUT
    except KeyboardInterrupt:
        _say("realfake: interrupted")
        return EXIT_INTERRUPTED


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of a broken stdout raises nothing."""
    # AttributeError, ValueError: there is no stdout at all
    with open(os.devnull, "w") as devnull, contextlib.suppress(AttributeError, OSError, ValueError):
        os.dup2(devnull.fileno(), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
