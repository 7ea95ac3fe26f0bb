"""Named recipes: params overrides in a file (recipes/<name>.yaml), run as named DVC experiments, recorded as results.

    python -m realfake.pipeline.recipes run fast-30min --seeds 42 1 2   # one `dvc exp run --temp` per seed
    python -m realfake.pipeline.recipes run smoke --set dcgan.epochs=2  # one more override (checked first)
    python -m realfake.pipeline.recipes record fast-30min               # results/fast-30min.json from those runs
    python -m realfake.pipeline.recipes table                           # docs/results.md and the README's table
    python -m realfake.pipeline.recipes ship fast-60min --model fast    # the recipe's model into the package

(`make exp RECIPE=... SEEDS=... SET=...`, `make record RECIPE=...`, `make results`, `make ship MODEL=...` call
these.) The jobs live in their own modules: recipe files and their checks (`recipe_files`), reading experiments back
from git (`results`), the tables (`tables`), shipping (`ship`); comparing experiments: `realfake.pipeline.compare`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from realfake.errors import RealfakeError
from realfake.paths import STATE_DIR_ENV, ProjectPaths
from realfake.pipeline.parent_runs import RECIPE_ENV
from realfake.pipeline.recipe_files import (  # noqa: F401  (re-exported: the names callers know)
    RECIPES,
    RESULTS,
    Recipe,
    apply_overrides,
    check,
    load_recipe,
    parse_sets,
)
from realfake.pipeline.results import WORKSPACE, experiment_refs, record, seed_row  # noqa: F401
from realfake.pipeline.ship import SHIPPED, ship  # noqa: F401
from realfake.pipeline.tables import HEADER, headline_rows, markdown, write_tables  # noqa: F401

log = logging.getLogger(__name__)


def exp_command(recipe: Recipe, seed: int, sets: dict[str, Any] | None = None) -> list[str]:
    """`dvc exp run --temp -n <recipe>-seed<N> -S key=value ... [targets]` (values in YAML flow form, as JSON): each
    experiment in its own temporary copy, so several can run at once and the workspace's files stay as they are."""
    args = ["dvc", "exp", "run", "--temp", "-n", recipe.experiment(seed), "-S", f"base.seed={seed}"]
    for key, value in (recipe.overrides | dict(sets or {})).items():
        args += ["-S", f"{key}={json.dumps(value)}"]
    return args + list(recipe.targets)


def run(root: Path, recipe: Recipe, seeds: tuple[int, ...], sets: dict[str, Any] | None = None) -> None:
    """One DVC experiment per seed, one after another (each in a temporary copy: the workspace is left as it is)."""
    check(root, recipe, sets)
    # an interrupted experiment resumes from its last epoch when rerun, although --temp gives it a new copy
    env = {**os.environ, STATE_DIR_ENV: str(ProjectPaths(Path(root).resolve()).state), RECIPE_ENV: recipe.name}
    for seed in seeds:
        command = exp_command(recipe, seed, sets)
        log.info("running %s", " ".join(command))
        started = time.monotonic()
        if subprocess.run(command, cwd=root, env=env).returncode != 0:
            raise RealfakeError(f"recipe {recipe.name}: `{' '.join(command)}` failed (see above)")
        log.info("%s finished in %.1f minutes", recipe.experiment(seed), (time.monotonic() - started) / 60)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m realfake.pipeline.recipes", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "record", "ship"):
        sub = commands.add_parser(name)
        sub.add_argument("recipe")
        sub.add_argument("--seeds", type=int, nargs="+", help="default: the recipe's seeds")
        if name == "record":
            sub.add_argument("--workspace", action="store_true", help="record the working tree's run (make repro)")
        if name == "run":
            sub.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE",
                             help="one more params override, checked against params.yaml first")  # fmt: skip
        if name == "ship":
            sub.add_argument("--model", help="the models.<name> section to ship (default: the recipe's first report)")
            sub.add_argument("--force", action="store_true", help="replace the shipped files of another model")
    commands.add_parser("table")
    commands.add_parser("list")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for path in sorted((args.root / RECIPES).glob("*.yaml")):
                description = load_recipe(args.root, path.stem).description
                print(f"{path.stem:18} {description[:100]}{'...' if len(description) > 100 else ''}")
            return 0
        if args.command == "table":
            write_tables(args.root)
            return 0
        recipe = load_recipe(args.root, args.recipe)
        seeds = tuple(args.seeds or recipe.seeds)
        if args.command == "run":
            run(args.root, recipe, seeds, parse_sets(args.set))
        elif args.command == "record":
            print(record(args.root, dataclasses.replace(recipe, seeds=seeds), workspace=args.workspace))
        else:
            model = args.model or (recipe.report[0] if recipe.report else "fast")
            print(ship(args.root, recipe, model=model, seed=seeds[0], force=args.force))
    except (RealfakeError, subprocess.CalledProcessError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
