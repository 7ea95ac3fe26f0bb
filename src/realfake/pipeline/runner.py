"""Run the pipeline's own stage commands, in dvc.yaml's order, where DVC and MLflow are not installed: a GPU host
with Keras on JAX and no network, say. The same scripts, the same library, the same params (params.yaml with a
recipe's overrides); no caching, no lock file, no tracking (REALFAKE_TRACKING=off).

    python -m realfake.pipeline.runner evaluate@fast --recipe fast-gpu --set base.seed=1

runs every stage `evaluate@fast` needs (download, prepare, train@fast, evaluate@fast), each once, in order. The
merged params go to `.cache/runner/params.yaml`; the outputs land where `dvc repro` would put them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from realfake.errors import ParamsError, RealfakeError
from realfake.params import load_params
from realfake.pipeline.recipe_files import apply_overrides, load_recipe

log = logging.getLogger(__name__)


def expand_stages(dvc_yaml: dict) -> dict[str, dict]:
    """{stage name: {cmd, deps, outs}}, every `matrix` entry expanded (one matrix key, as realfake's dvc.yaml has)."""
    stages = {}
    for name, stage in dvc_yaml["stages"].items():
        matrix = stage.get("matrix")
        items = [None] if not matrix else [(key, value) for key, values in matrix.items() for value in values]
        for item in items:
            text = json.dumps(stage)
            full = name
            if item:
                text = text.replace("${item." + item[0] + "}", str(item[1]))
                full = f"{name}@{item[1]}"
            spec = json.loads(text)
            outs = [next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", []) + spec.get("metrics", [])]
            stages[full] = {"cmd": spec["cmd"], "deps": spec.get("deps", []), "outs": outs}
    return stages


def plan(stages: dict[str, dict], targets: list[str]) -> list[str]:
    """The stages that `targets` need, each after the stages that produce its dependencies."""
    producers = {out: name for name, stage in stages.items() for out in stage["outs"]}
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name not in stages:
            raise ParamsError(f"no stage {name!r} in dvc.yaml; stages: {', '.join(stages)}")
        if name in order:
            return
        if name in path:
            raise RealfakeError(f"dvc.yaml has a cycle: {' -> '.join((*path, name))}")
        for dep in stages[name]["deps"]:
            if dep in producers:
                visit(producers[dep], (*path, name))
        order.append(name)

    for target in targets or list(stages):
        visit(target, ())
    return order


def merged_params(root: Path, recipe: str | None, sets: list[str]) -> dict:
    yaml = YAML(typ="safe", pure=True)
    params = yaml.load((root / "params.yaml").read_text())
    if recipe:
        params = apply_overrides(params, load_recipe(root, recipe).overrides, where=f"recipes/{recipe}.yaml")
    for item in sets:
        key, _, value = item.partition("=")
        params = apply_overrides(params, {key: yaml.load(value)}, where=f"--set {item}")
    return params


def run(root: Path, targets: list[str], *, recipe: str | None, sets: list[str]) -> list[str]:
    root = Path(root).resolve()
    params_file = root / ".cache" / "runner" / "params.yaml"
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(json.dumps(merged_params(root, recipe, sets), indent=1))
    load_params(params_file)  # refuse bad params before any stage runs
    if not targets and recipe:
        targets = list(load_recipe(root, recipe).targets)
    stages = expand_stages(YAML(typ="safe", pure=True).load((root / "dvc.yaml").read_text()))
    order = plan(stages, targets)
    env = os.environ | {"REALFAKE_TRACKING": "off", "DVC_ROOT": str(root)}
    for name in order:
        command = f"{stages[name]['cmd']} --params {params_file}"
        log.info("stage %s: %s", name, command)
        started = time.monotonic()
        if subprocess.run(["sh", "-c", command], cwd=root, env=env).returncode != 0:
            raise RealfakeError(f"stage {name} failed: {command}")
        log.info("stage %s done in %.1f s", name, time.monotonic() - started)
    return order


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m realfake.pipeline.runner", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="stages to run with everything they need (default: all)")
    parser.add_argument("--recipe", help="apply recipes/<name>.yaml's overrides")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    args = parser.parse_args(argv)
    try:
        run(args.root, args.targets, recipe=args.recipe, sets=args.set)
    except RealfakeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
