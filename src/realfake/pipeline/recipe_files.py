"""Recipe files (recipes/<name>.yaml): what one holds, and whether its overrides, with any extra `-S key=value`,
make a valid params.yaml. Every key must be a key of params.yaml (an unknown section or key is refused with one line
naming it, before DVC decides anything), and the merged params must pass `realfake.params.load_params`.

A recipe file holds `description`, optional `targets` (the stages to run; default all), `seeds`, `report` (the
models whose metrics make its results), `set` (params overrides in params.yaml's dotted keys) and, for the reference
study, `published` (the figures it reported). Experiments are named `<recipe>-seed<N>`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from realfake.errors import ParamsError
from realfake.params import load_params

RECIPES, RESULTS = "recipes", "results"


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    targets: tuple[str, ...]
    seeds: tuple[int, ...]
    report: tuple[str, ...]
    overrides: dict[str, Any]
    published: dict[str, Any]

    def experiment(self, seed: int) -> str:
        return f"{self.name}-seed{seed}"

    def command(self, seeds: tuple[int, ...] | None = None) -> str:
        return f'make exp RECIPE={self.name} SEEDS="{" ".join(map(str, seeds or self.seeds))}"'


def _yaml() -> YAML:
    return YAML(typ="safe", pure=True)


def load_recipe(root: Path, name: str) -> Recipe:
    path = Path(root) / RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (Path(root) / RECIPES).glob("*.yaml"))) or "none"
        raise ParamsError(f"{path}: no such recipe; known recipes: {known}")
    raw = _yaml().load(path.read_text()) or {}
    unknown = set(raw) - {"description", "targets", "seeds", "report", "set", "published"}
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    return Recipe(
        name=name,
        description=str(raw.get("description", "")).strip(),
        targets=tuple(raw.get("targets") or ()),
        seeds=tuple(int(s) for s in raw.get("seeds") or (42,)),
        report=tuple(raw.get("report") or ()),
        overrides=dict(raw.get("set") or {}),
        published=dict(raw.get("published") or {}),
    )


def apply_overrides(params: dict, overrides: dict[str, Any], *, where: str) -> dict:
    """A copy of `params` with each dotted key set; a key that params.yaml does not have is refused."""
    out = json.loads(json.dumps(params))
    for key, value in overrides.items():
        node, *parents = out, *key.split(".")[:-1]
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"{where}: {key}: params.yaml has no section {part!r} on this path")
            node = node[part]
        last = key.split(".")[-1]
        if not isinstance(node, dict) or last not in node:
            raise ParamsError(f"{where}: {key}: not a key of params.yaml")
        node[last] = value
    return out


def parse_sets(sets: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`key=value` strings (DVC's `-S` form; values in YAML) as {key: value}; one without `=` is refused."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"-S {item}: expected key=value (e.g. models.fast.epochs=3)")
        out[key.strip()] = _yaml().load(value) if value.strip() else None
    return out


def check(root: Path, recipe: Recipe, sets: dict[str, Any] | None = None) -> None:
    """Refuse a recipe whose overrides (and the extra `sets`) do not make a valid params.yaml, before any experiment
    starts: an unknown section or key, or a bad value, is one line naming it."""
    params = _yaml().load((Path(root) / "params.yaml").read_text())
    merged = apply_overrides(params, recipe.overrides, where=f"recipes/{recipe.name}.yaml")
    merged = apply_overrides(merged, dict(sets or {}), where="-S")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(json.dumps(merged))
        load_params(path)
