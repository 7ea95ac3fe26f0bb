"""What every stage script shares: logging set-up, user errors printed as one clear line, the checked test split."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from realfake.errors import RealfakeError
from realfake.paths import ProjectPaths


def parse_args(description: str, root: Path, extra_args: Callable | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=root / "params.yaml", help="params file (default: %(default)s)")
    if extra_args:
        extra_args(parser)
    return parser.parse_args()


def run(
    main: Callable[[ProjectPaths, argparse.Namespace], None],
    *,
    description: str,
    root: Path,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Run a stage's main(); a RealfakeError exits 1 with its message instead of a traceback."""
    logging.basicConfig(
        level=os.environ.get("REALFAKE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides real messages
    args = parse_args(description, root, extra_args)
    try:
        main(ProjectPaths(root), args)
    except RealfakeError as exc:
        logging.getLogger("realfake").error("%s", exc)
        sys.exit(1)


def model_arg(parser: argparse.ArgumentParser) -> None:
    """The --model option of the per-model (matrix) stages."""
    parser.add_argument("--model", required=True, help="a models.<name> section of params.yaml")


def load_test_split(paths: ProjectPaths, *, image_size: int):
    """(the prepared CIFAKE test split, its path), checked to hold uint8 RGB images of `image_size` pixels."""
    from realfake.classifiers import check_split
    from realfake.fileio import load_arrays
    from realfake.prepare import Split

    path = paths.prepared_split("test")
    test = Split.from_arrays(load_arrays(path))
    check_split(test, image_shape=(image_size, image_size, 3), source=str(path))
    return test, path
