"""Atomic writes: a reader (or an interrupted run) never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _remove_stale_siblings(final: Path) -> None:
    """Delete temporary siblings of `final` left by a process that no longer runs (killed by SIGKILL, say).

    Their names carry the writer's pid: `.<name>.<pid>.<random>.tmp`.
    """
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        writer = stale.name[len(final.name) + 2 :].split(".", 1)[0]
        if writer.isdigit() and int(writer) != os.getpid() and not _running(int(writer)):
            shutil.rmtree(stale, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(final: Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final`, on error (or a signal that unwinds,
    see `pipeline.process`) it is removed. Siblings left by dead writers are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a renamed output folder should get the usual permissions
    target = tmp if is_dir else tmp / final.name
    try:
        yield target
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_paths(*finals: Path, commit_guard=contextlib.nullcontext) -> Iterator[list[Path]]:
    """`atomic_path` for several outputs that belong together: all are written to temporary siblings, and only when
    the block succeeds do they replace their finals, one right after the other, inside `commit_guard()` (a context
    that holds off signals, say); on error none does."""
    with contextlib.ExitStack() as stack:
        staged = [stack.enter_context(atomic_path(final)) for final in finals]
        yield staged
        with commit_guard():
            stack.close()


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed .npz: images are already compact uint8 and load faster without zlib."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
