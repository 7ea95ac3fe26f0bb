"""What every stage script shares: logging set-up, signals, dying with DVC, and user errors printed as one line.

Exit status: 0 done; 1 a user-fixable error (printed as one line naming the file or parameter); 130 Ctrl-C;
143 SIGTERM (or the DVC process that started the stage went away).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from realfake.errors import RealfakeError
from realfake.paths import ProjectPaths
from realfake.pipeline import process

log = logging.getLogger("realfake")


def parse_args(description: str, root: Path, extra_args: Callable | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=root / "params.yaml", help="params file (default: %(default)s)")
    if extra_args:
        extra_args(parser)
    return parser.parse_args()


def _store_error(exc: BaseException) -> bool:
    """Whether `exc` came from the MLflow store (MLflow, SQLAlchemy or its HTTP client)."""
    modules = {type(e).__module__.split(".")[0] for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(modules & {"mlflow", "sqlalchemy", "requests", "urllib3"})


def run(
    main: Callable[[ProjectPaths, argparse.Namespace], None],
    *,
    description: str,
    script: str,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Run a stage's main() for the repository `script` (stages/<name>.py) sits in: SIGTERM unwinds like Ctrl-C, the
    stage ends with the DVC process that started it, and a RealfakeError (or an MLflow store failure) exits 1 with
    one line instead of a traceback."""
    root = Path(script).resolve().parents[1]
    logging.basicConfig(
        level=os.environ.get("REALFAKE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    process.on_sigterm()
    process.die_with_launcher()
    args = parse_args(description, root, extra_args)
    try:
        main(ProjectPaths(root), args)
    except RealfakeError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except process.Terminated as exc:
        log.error("%s; temporary files removed, MLflow run marked KILLED", exc)
        sys.exit(143)
    except KeyboardInterrupt:
        log.error("interrupted; temporary files removed, MLflow run marked KILLED")
        sys.exit(130)
    except Exception as exc:
        if not _store_error(exc):
            raise
        from realfake.pipeline.tracking import _store_problem, tracking_uri

        log.error("%s", _store_problem(tracking_uri(root), exc))
        sys.exit(1)


def main_root(paths: ProjectPaths) -> Path:
    """The main repository (DVC_ROOT), also when DVC runs this stage in a temporary experiment copy."""
    from realfake.pipeline.tracking import main_root as repo_of

    return repo_of(paths.root)


def model_arg(parser: argparse.ArgumentParser) -> None:
    """The --model option of the per-model (matrix) stages."""
    parser.add_argument("--model", required=True, help="a models.<name> section of params.yaml")


def load_split(paths: ProjectPaths, name: str, *, image_size: int):
    """The prepared split `name` (train, val or test) of this repository, checked (see `data.prepare.load_split`)."""
    from realfake.data.prepare import load_split as load

    return load(paths.prepared_split(name), image_size=image_size)
