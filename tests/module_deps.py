"""Which of the library's files a stage script runs: the closure of its `realfake` imports, including imports inside
functions and the packages' `__init__` files, found by reading the source (no import, no side effects)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """src/realfake/a/b.py or src/realfake/a/b/__init__.py for "realfake.a.b"; None when it is not a file of ours."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path, package: str) -> set[str]:
    """Absolute names of every realfake module `path` imports anywhere in it (plus `from x import module`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join([*package.split(".")[: 1 - node.level], node.module])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module` imports a module
    return {n for n in names if n == "realfake" or n.startswith("realfake.")}


def closure(script: Path) -> set[Path]:
    """Every file under src/realfake that running `script` may import, with the __init__ of each package on the way."""
    seen: set[Path] = set()
    todo = [(script, "")]
    while todo:
        path, package = todo.pop()
        for name in _imported(path, package):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ first
                found = module_file(".".join(parts[:depth]))
                if found and found not in seen:
                    seen.add(found)
                    owner = ".".join(parts[:depth]) if found.name == "__init__.py" else ".".join(parts[: depth - 1])
                    todo.append((found, owner))
    return seen


def stage_deps(script: Path) -> list[str]:
    """The paths (relative to the repo, sorted) a dvc.yaml stage running `script` must list under deps."""
    return sorted(str(p.relative_to(REPO)) for p in closure(script))
