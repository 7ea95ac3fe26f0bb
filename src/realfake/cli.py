"""The `realfake` command: `realfake predict PATH...` tells real photos from generated ones.

Exit status: 0 every image was classified; 1 some files were skipped (listed on stderr as "path: reason") but
others were classified; 2 usage error, no readable image, or a model that cannot be found or loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from realfake.errors import ParamsError, RealfakeError

# Only when there is no params.yaml to take evaluate.threshold from (a model used outside the repo): for
# calibrated probabilities 0.5 is the decision point that minimises errors.
FALLBACK_THRESHOLD = 0.5

EXIT_OK, EXIT_SKIPPED, EXIT_FAILED = 0, 1, 2


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
    parser = argparse.ArgumentParser(prog="realfake", description=__doc__.split("\n")[0])
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
        help="a .keras file or an MLflow URI (models:/NAME/VERSION, runs:/RUN_ID/PATH); default: the binary model "
        "of the repo's last pipeline run with the highest validation accuracy",
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
    predict.add_argument(
        "--threshold",
        type=_fraction,
        help="P(fake) at or above which an image is called fake (default: evaluate.threshold in the "
        f"repo's params.yaml, {FALLBACK_THRESHOLD} without one)",
    )
    predict.set_defaults(func=run_predict)
    return parser


def default_threshold(root: Path) -> float:
    """evaluate.threshold of the repo's params.yaml (its one home); FALLBACK_THRESHOLD when there is none."""
    from realfake.params import load_params

    params_file = root / "params.yaml"
    if not params_file.is_file():
        return FALLBACK_THRESHOLD
    try:
        return load_params(params_file, sections=["evaluate"]).evaluate.threshold
    except ParamsError as exc:
        raise ParamsError(f"{exc} (reading the default threshold; pass --threshold, or --repo)") from None


def run_predict(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter would bury the results
    from PIL import Image

    from realfake import predict
    from realfake.paths import ProjectPaths
    from realfake.tracking import tracking_uri

    Image.MAX_IMAGE_PIXELS = predict.MAX_PIXELS  # this process's own Pillow guard; load_image checks it too
    root = args.repo.resolve() if args.repo else predict.find_repo_root(Path.cwd())
    threshold = args.threshold if args.threshold is not None else default_threshold(root)

    images, problems = predict.find_images(args.paths)
    for path, reason in problems:
        _say(f"{path}: {reason}")
    if not images:
        _say("realfake: no image files to classify")
        return EXIT_FAILED

    if args.model:
        loaded = predict.load_named_model(args.model, tracking_uri=tracking_uri(root))
    else:
        loaded, accuracy = predict.best_binary_model(ProjectPaths(root))
        _say(
            f"realfake: using model {loaded.name} ({loaded.source}, validation accuracy {accuracy:.4f}, the best "
            "binary model of the last pipeline run; --model picks another)"
        )

    predictions, skipped = predict.classify(
        loaded, images, batch_size=args.batch_size, threshold=threshold, max_pixels=predict.MAX_PIXELS
    )
    for path, reason in skipped:
        _say(f"{path}: {reason}")
    if not predictions:
        _say("realfake: no readable image among the given files")
        return EXIT_FAILED
    sys.stdout.write(predict.FORMATTERS[args.format](predictions))
    return EXIT_SKIPPED if problems or skipped else EXIT_OK


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


if __name__ == "__main__":
    sys.exit(main())
