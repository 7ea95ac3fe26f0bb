"""The `realfake` command tells real photos from AI-generated images: `realfake predict PATH...` classifies image
files and folders; `realfake serve` answers the same over HTTP; `realfake explain IMAGE` shows where a model looked
(Grad-CAM).

Exit status: 0 every image was classified; 1 some files were skipped (listed on stderr as "path: reason") but
others were classified; 2 usage error, no readable image, or a model that cannot be found or loaded; 3 the results
could not be written (standard output closed, a pipe whose reader went away, a full disk); 130 interrupted (Ctrl-C).
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

EXIT_OK, EXIT_SKIPPED, EXIT_FAILED, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SHIPPED = "shipped"  # --model value naming the default detector shipped with realfake; shipped:<name> another
EXIT_WORDS = (
    "exit status: 0 every image classified; 1 some files skipped, others classified; 2 usage error, no readable "
    "image, or a model that cannot be found or loaded; 3 the results could not be written (stdout closed, a broken "
    "pipe, a full disk); 130 interrupted"
)


class OutputError(Exception):
    """The results could not be written to stdout (the reader of a pipe went away, a full disk, a closed stdout)."""


def _say(message: str) -> None:
    """A line for the user on stderr: stdout carries only the results, so they can be piped."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(message, file=sys.stderr, flush=True)


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
        "white), centre-cropped to square and resized to the model's 32x32 with LANCZOS (a large image is first "
        "reduced while decoding); 32x32 images are used as decoded. A resized image is out of the detector's "
        "distribution and flagged so. Unreadable files are listed on stderr and skipped. Results are written "
        "batch by batch as they come.",
        epilog=EXIT_WORDS,
    )
    predict.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="image files, or folders searched recursively for jpg/jpeg/png/webp/bmp/gif/tif/tiff",
    )
    add_model_options(predict)
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output (default: table)")
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        help="images decoded and scored at a time; memory is bounded by it (default: %(default)s)",
    )
    decision = predict.add_mutually_exclusive_group()
    decision.add_argument(
        "--threshold",
        type=_fraction,
        help="P(fake) at or above which an image is called fake (default: the threshold the model was evaluated "
        "at, from its card or evaluate report; 0.5 without one)",
    )
    decision.add_argument(
        "--max-fpr",
        type=_fraction,
        metavar="RATE",
        help="use the threshold stored with the model that flagged at most RATE of real validation images as fake "
        "(e.g. 0.01; the model's detector file lists the rates it has)",
    )
    predict.set_defaults(func=run_predict)

    serve = commands.add_parser(
        "serve",
        help="answer predictions over HTTP (a JSON API and an upload page)",
        description="Serve the detector predict uses over HTTP: POST /v1/predict (multipart field `file`, one or "
        "more images), GET /healthz, and an upload page at /. Listens on 127.0.0.1 unless told otherwise.",
    )
    add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    serve.set_defaults(func=run_serve)

    detectors = commands.add_parser(
        "detectors",
        help="list the detectors shipped with realfake (the default first) with their measured accuracy",
        description="The detectors shipped inside the package, the default first: each one's --model name, the "
        "recipe that trained it and its accuracy on CIFAKE's test split, clean and under the robustness "
        "perturbations (from its card; MODEL_CARD.md beside it says more).",
    )
    detectors.set_defaults(func=run_detectors)

    explain = commands.add_parser(
        "explain",
        help="write a Grad-CAM heatmap of where a model looked in an image (loads TensorFlow)",
        description="Grad-CAM of the predicted class, one PNG per image: the image (resized as `predict` does), "
        "the heatmap over it and alone with its colour bar, titled with the call and P(fake). Unlike predict, it "
        "needs the Keras model (a .keras file) and loads TensorFlow: seconds to start and several hundred MB.",
    )
    explain.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    explain.add_argument("--model", help="a .keras file or an MLflow URI (default: as for predict)")
    explain.add_argument("--repo", type=Path, help="as for predict")
    explain.add_argument("--output", type=Path, help="the PNG to write, for one IMAGE (default: each IMAGE's name + "
                         ".gradcam.png, here)")  # fmt: skip
    explain.set_defaults(func=run_explain)
    return parser


def add_model_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--model",
        help="a .onnx file (runs without TensorFlow), a .keras file, or an MLflow URI (models:/NAME/VERSION, "
        "models:/NAME@champion, runs:/RUN_ID/PATH); default: the binary model of the repo's last pipeline run with "
        "the highest validation accuracy (its ONNX export when current), else the default detector shipped with "
        "realfake (`--model shipped` picks it in a repo too; `--model shipped:NAME` another one, `realfake "
        "detectors` lists them)",
    )
    command.add_argument(
        "--repo", type=Path, help="the pipeline repo (default: the nearest folder at or above this one with dvc.yaml)"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("realfake")
    except PackageNotFoundError:
        return "unknown (not installed)"


def choose_threshold(args: argparse.Namespace, loaded) -> float:
    """--threshold, else the stored operating point --max-fpr names, else the model's own threshold."""
    if getattr(args, "threshold", None) is not None:
        return args.threshold
    if getattr(args, "max_fpr", None) is None:
        return loaded.threshold
    point = operating_point(loaded, args.max_fpr)
    _say(f"realfake: threshold {point['threshold']:.4f}: flagged {point['fpr']:.2%} of real validation images "
         f"(at most {args.max_fpr:g}) and caught {point['recall']:.2%} of fakes")  # fmt: skip
    return point["threshold"]


def operating_point(loaded, max_fpr: float) -> dict:
    points = loaded.info.operating_points if loaded.info else {}
    wanted = f"fpr_{max_fpr:g}"  # evaluation.thresholds.point_name
    if wanted not in points:
        stored = ", ".join(f"{p['max_fpr']:g}" for p in points.values()) or "none"
        raise ParamsError(f"--max-fpr {max_fpr:g}: model {loaded.name} stores thresholds for rates {stored}")
    return points[wanted]


def _write(stream, text: str) -> None:
    """Write and flush `text` to stdout, turning the ways it can fail into OutputError."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise OutputError("the reader of stdout went away") from None
    except OSError as exc:  # ENOSPC, EBADF, EIO
        raise OutputError(f"cannot write to stdout: {exc.strerror or exc}") from None
    except ValueError:  # a closed file object
        raise OutputError("stdout is closed") from None


class _Stdout:
    """sys.stdout as the writers see it: every write is flushed at once, failures become OutputError."""

    def write(self, text: str) -> None:
        _write(sys.stdout, text)


def run_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from realfake.serving import classify, images, models, output

    if sys.stdout is None:  # started with file descriptor 1 closed
        raise OutputError("stdout is closed")
    Image.MAX_IMAGE_PIXELS = images.MAX_PIXELS  # this process's own Pillow guard; load_image checks it too
    root = args.repo.resolve() if args.repo else models.find_repo_root(Path.cwd())

    found, problems = images.find_images(args.paths)
    for path, reason in problems:
        _say(f"{output.escape_control(images.display_path(path))}: {reason}")
    if not found:
        _say("realfake: no image files to classify")
        return EXIT_FAILED

    loaded = load_model(args, root)
    threshold = choose_threshold(args, loaded)
    skipped = []

    def on_skip(path: Path, reason: str) -> None:
        skipped.append(path)
        _say(f"{output.escape_control(images.display_path(path))}: {reason}")

    writer = output.WRITERS[args.format](_Stdout())
    shown = resized = far = 0
    for batch in classify.classify(loaded, found, batch_size=args.batch_size, threshold=threshold,
                                   max_pixels=images.MAX_PIXELS, on_skip=on_skip):  # fmt: skip
        writer.write(batch)
        shown += len(batch)
        resized += sum(p.resampled for p in batch)
        far += sum(bool(p.ood) for p in batch)
    writer.close()
    if not shown:
        _say("realfake: no readable image among the given files")
        return EXIT_FAILED
    _warn_about(resized, far, loaded)
    return EXIT_SKIPPED if problems or skipped else EXIT_OK


def _warn_about(resized: int, far: int, loaded) -> None:
    """One line each when images were resized to the model's input, or lie outside the training distribution."""
    if resized:
        measured = (
            f"measured accuracy on CIFAKE images downscaled 2x and back: {loaded.resized_accuracy:.3f}"
            if loaded.resized_accuracy is not None
            else "its accuracy on resized images was not measured"
        )
        _say(f"realfake: warning: {resized} image(s) were not 32x32 and were resized; the detector was trained on "
             f"32x32 CIFAKE images ({measured}), so treat these verdicts with caution")  # fmt: skip
    if far:
        _say(f"realfake: warning: {far} image(s) are out of distribution (far from every training image); "
             "their verdicts are unreliable")  # fmt: skip


def load_model(args: argparse.Namespace, root: Path, *, keras: bool = False):
    """--model, else the repo's best binary model, else the shipped detector; `keras`: a Keras model only."""
    from realfake.paths import ProjectPaths
    from realfake.serving import models

    if args.model == SHIPPED or (args.model or "").startswith(f"{SHIPPED}:"):
        return models.shipped_model(args.model.partition(":")[2] or None, keras=keras)
    if args.model:
        if keras and args.model.lower().endswith(".onnx"):
            raise ParamsError(f"{args.model}: explain needs the Keras model (the .keras file it was exported from)")
        return models.load_named_model(args.model, tracking_uri=models.store_uri(root))
    paths = ProjectPaths(root)
    if models.has_pipeline_models(paths):
        loaded, accuracy = models.best_binary_model(paths, keras_only=keras)
        shipped = models.shipped_validation_accuracy()
        versus = "" if shipped is None else f"; the shipped detector's: {shipped:.4f} on its own split"
        _say(
            f"realfake: using model {loaded.name} ({loaded.source}), the best binary model of this repository's "
            f"pipeline: validation accuracy {accuracy:.4f} on this repository's split{versus} (`--model shipped` "
            "uses that one, --model PATH another)"
        )
        return loaded
    loaded = models.shipped_model(keras=keras)
    _say(f"realfake: using the detector shipped with realfake, {loaded.name} ({loaded.source}; see MODEL_CARD.md "
         "beside it)")  # fmt: skip
    return loaded


def run_detectors(args: argparse.Namespace) -> int:
    from realfake.serving.detectors_command import run_detectors as run

    return run(args)


def run_serve(args: argparse.Namespace) -> int:
    from realfake.serving import models, server

    root = args.repo.resolve() if args.repo else models.find_repo_root(Path.cwd())
    loaded = load_model(args, root)
    return server.serve(loaded, host=args.host, port=args.port)


def run_explain(args: argparse.Namespace) -> int:
    from realfake.serving.explain_command import run_explain as run

    return run(args)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so the interpreter's final flush of what is still buffered fails no
    more (it would print "Exception ignored ... BrokenPipeError")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `realfake` console script; returns the exit status."""
    try:
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
            _silence_stdout()
            _say(f"realfake: results not written: {exc}")
            return EXIT_OUTPUT
    except KeyboardInterrupt:
        _silence_stdout()
        _say("realfake: interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
