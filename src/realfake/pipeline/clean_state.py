"""`make clean-state`: forget the resumable state of interrupted or failed trainings, with their lock files, and the
download cache. It cleans the state folder stages use (REALFAKE_STATE_DIR when set, else .cache/state) and those of
the experiment copies under .dvc/tmp. A state that a running training holds is kept, so it is safe while one runs.

    python -m realfake.pipeline.clean_state [REPO]
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from realfake.paths import ProjectPaths
from realfake.pipeline.stage import sweep_stale_state

log = logging.getLogger("realfake.clean_state")


def state_roots(paths: ProjectPaths) -> list[Path]:
    """The state folders to clean: this repository's (or REALFAKE_STATE_DIR) and its experiment copies'."""
    roots = [paths.state, paths.root / ".cache" / "state"]
    roots += sorted((paths.root / ".dvc" / "tmp").glob("**/.cache/state"))
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


def clean(paths: ProjectPaths) -> tuple[list[Path], list[Path]]:
    """(removed, kept): the state folders and lock files removed, and the state folders kept because a running
    training holds them. Empty folders left behind go too; the download cache goes whole."""
    removed: list[Path] = []
    for root in state_roots(paths):
        for folder in sorted({lock.parent for lock in root.rglob("*.lock")}):
            removed += sweep_stale_state(folder)
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    kept = [lock.with_name(lock.name.removesuffix(".lock")) for r in state_roots(paths) for lock in r.rglob("*.lock")]
    if paths.download_cache.exists():
        shutil.rmtree(paths.download_cache)
        removed.append(paths.download_cache)
    return removed, kept


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    paths = ProjectPaths(Path(args[0]) if args else Path.cwd())
    removed, kept = clean(paths)
    log.info("removed %d state folder(s) and lock file(s)%s", len(removed),
             f"; kept {len(kept)} that a running training holds" if kept else "")  # fmt: skip
    for path in kept:
        log.info("  kept (in use): %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
