"""What every stage script shares: logging set-up, signals, dying with DVC, user errors printed as one line, a quiet
TensorFlow start, and one closing line per stage with its wall time.

Exit status: 0 done; 1 a user-fixable error (printed as one line naming the file or parameter); 130 Ctrl-C;
143 SIGTERM (or the DVC process that started the stage went away).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from realfake import quiet_tensorflow
from realfake.errors import DataError, RealfakeError
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


def _run_ending() -> str:
    """What became of the stage's MLflow run when it was interrupted, as the store confirmed it."""
    from realfake.pipeline import tracking

    end = tracking.last_end()
    if not end:
        return "no MLflow run was open"
    if end["accepted"]:
        return f"MLflow run marked {end['status']}"
    return (f"MLflow run {end['run_id']} could not be marked {end['status']} in {end['uri']}; the next stage that "
            "reaches the store marks it FAILED")  # fmt: skip


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


_params_read: dict[str, object] = {}  # the params file this stage read at its start, and its digest then


def check_params_unchanged() -> None:
    """Raise if the params file changed since the stage started; a no-op outside `run`. Training stages call it just
    before they replace their outputs, so a refused stage leaves the previous model and metrics in place."""
    if _params_read:
        _check_params_unchanged(_params_read["path"], _params_read["digest"])


def _check_params_unchanged(path: Path, before: str | None) -> None:
    """A second `dvc exp run` in the same workspace rewrites params.yaml while this stage runs; DVC would then record
    the new values in dvc.lock for outputs made with the old ones. Failing the stage keeps that wrong record out."""
    if _file_digest(path) != before:
        raise RealfakeError(
            f"{path} changed while this stage ran (another `dvc exp run` in this workspace?): its outputs were made "
            "with the values read at its start, so it fails rather than let DVC record the new ones. Run experiments "
            "one at a time in a workspace, or side by side with `dvc exp run --queue` or `make exp` (temporary copies)"
        )


STATEFUL_STAGES = ("train", "train_3class", "train_dcgan")  # stages keeping resumable state under paths.state


def sweep_stale_state(folder: Path) -> list[Path]:
    """Remove the state folders under `folder` that no process holds, with their lock files, and lock files left
    without a folder; return what was removed. A stage that succeeded has cleared its own state, so what remains
    of it is what failed or abandoned runs (other params) left behind. A folder whose lock a running training holds
    is kept."""
    import fcntl
    import shutil

    removed = []
    if not folder.is_dir():
        return removed
    for lock in sorted(folder.glob("*.lock")):
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use
            state = lock.with_name(lock.name.removesuffix(".lock"))
            if state.is_dir():
                shutil.rmtree(state, ignore_errors=True)
                removed.append(state)
            lock.unlink(missing_ok=True)
            removed.append(lock)
    return removed


def _sweep_after_success(paths: ProjectPaths, stage_name: str, model: str | None) -> None:
    if stage_name not in STATEFUL_STAGES:
        return
    folder = paths.state / stage_name / (model if isinstance(model, str) else "")
    if stage_name == "train_dcgan":
        folder = paths.state / stage_name
    removed = [p for p in sweep_stale_state(folder) if p.suffix != ".lock"]
    if removed:
        log.info("removed %d state folder(s) that earlier runs with other params left in %s", len(removed), folder)


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
    quiet_tensorflow()  # also when realfake was imported after TensorFlow
    process.on_sigterm()
    process.die_with_launcher()
    args = parse_args(description, root, extra_args)
    label = Path(script).stem + (f"@{args.model}" if isinstance(getattr(args, "model", None), str) else "")
    started, outcome = time.monotonic(), "failed"
    params_before = _file_digest(args.params)
    _params_read.update(path=args.params, digest=params_before)
    try:
        main(ProjectPaths(root), args)
        _check_params_unchanged(args.params, params_before)
        outcome = "done"
        _sweep_after_success(ProjectPaths(root), Path(script).stem, getattr(args, "model", None))
    except RealfakeError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except process.Terminated as exc:
        outcome = "stopped"
        log.error("%s; temporary files removed, %s", exc, _run_ending())
        sys.exit(143)
    except KeyboardInterrupt:
        outcome = "stopped"
        log.error("interrupted; temporary files removed, %s", _run_ending())
        sys.exit(130)
    except Exception as exc:
        if not _store_error(exc):
            raise
        from realfake.pipeline.tracking import _store_problem, tracking_uri

        log.error("%s", _store_problem(tracking_uri(root), exc))
        sys.exit(1)
    finally:
        log.info("stage %s %s in %.1f s", label, outcome, time.monotonic() - started)


def main_root(paths: ProjectPaths) -> Path:
    """The main repository (DVC_ROOT), also when DVC runs this stage in a temporary experiment copy."""
    from realfake.pipeline.tracking import main_root as repo_of

    return repo_of(paths.root)


def model_arg(parser: argparse.ArgumentParser) -> None:
    """The --model option of the per-model (matrix) stages."""
    parser.add_argument("--model", required=True, help="a models.<name> section of params.yaml")


def load_raw(paths: ProjectPaths):
    """The decoded CIFAKE of this repository (data/raw/cifake.npz), or one line naming the stage that makes it."""
    from realfake.data.cifake import RawDataset
    from realfake.fileio import load_arrays

    if not paths.raw_dataset.exists():
        raise DataError(f"{paths.raw_dataset}: decoded CIFAKE not found; run `dvc repro download` first")
    return RawDataset.from_arrays(load_arrays(paths.raw_dataset))


def load_split(paths: ProjectPaths, name: str, *, image_size: int):
    """The prepared split `name` (train, val or test) of this repository, checked (see `data.prepare.load_split`)."""
    from realfake.data.prepare import load_split as load

    return load(paths.prepared_split(name), image_size=image_size)
