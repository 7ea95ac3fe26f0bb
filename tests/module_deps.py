"""Which of the library's files a stage script runs: the closure of its `realfake` imports, including imports inside
functions and the packages' `__init__` files, found by reading the source (no import, no side effects)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# Glue: code at the edge of a stage that logs, registers, serves or handles signals and never computes an output.
# A stage does not depend on it, so editing how a run is logged re-runs nothing; the closure does not enter it.
GLUE = ("realfake.serving", "realfake.pipeline")
COMPUTING_IN_GLUE = ("realfake.pipeline.training_run",)  # writes the train stages' declared outputs
# `realfake/__init__.py` imports inside functions only for its callers: `load_model` (stages load models through
# realfake.models.saving) and the Keras post-import hook that registers realfake's layers, which a stage that
# imports Keras gets through its own closure (tests/test_dvc_deps.py checks that).
LAZY_ONLY = (SRC / "realfake" / "__init__.py",)


def is_glue(name: str) -> bool:
    inside = any(name == g or name.startswith(g + ".") for g in GLUE)
    return inside and name not in COMPUTING_IN_GLUE and not name.endswith("__init__") and name not in GLUE


def module_file(name: str) -> Path | None:
    """src/realfake/a/b.py or src/realfake/a/b/__init__.py for "realfake.a.b"; None when it is not a file of ours."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path, package: str, *, top_level_only: bool = False) -> set[str]:
    """Absolute names of every realfake module `path` imports anywhere in it (plus `from x import module`)."""
    names = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join([*package.split(".")[: 1 - node.level], node.module])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module` imports a module
    return {n for n in names if n == "realfake" or n.startswith("realfake.")}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts)


def closure(script: Path, *, skip_glue: bool = False) -> set[Path]:
    """Every file under src/realfake that running `script` may import, with the __init__ of each package on the way.

    `skip_glue`: the computing closure. It follows glue modules (`GLUE`) into whatever computing code they call but
    does not list them, and it reads only the top-level imports of `LAZY_ONLY` files."""
    seen: set[Path] = set()
    todo = [(script, "")]
    while todo:
        path, package = todo.pop()
        for name in _imported(path, package, top_level_only=skip_glue and path in LAZY_ONLY):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ first
                found = module_file(".".join(parts[:depth]))
                if found and found not in seen:
                    seen.add(found)
                    owner = ".".join(parts[:depth]) if found.name == "__init__.py" else ".".join(parts[: depth - 1])
                    todo.append((found, owner))
    if skip_glue:
        seen = {path for path in seen if not is_glue(module_name(path))}
    return seen


def stage_deps(script: Path) -> list[str]:
    """The paths (relative to the repo, sorted) a dvc.yaml stage running `script` must list under deps."""
    return sorted(str(p.relative_to(REPO)) for p in closure(script, skip_glue=True))
