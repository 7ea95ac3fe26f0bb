"""Reading a recipe's DVC experiments back from git (DVC keeps each experiment as a git ref) into
results/<recipe>.json: every number comes from the experiments' committed metric files."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from realfake.errors import RealfakeError
from realfake.pipeline.recipe_files import RESULTS, Recipe, _yaml


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def experiment_refs(root: Path, name: str) -> list[str]:
    """Git refs of the DVC experiments called `name`, newest first."""
    refs = _git(root, "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps").split()
    return [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]


WORKSPACE = "workspace"  # a pseudo-ref: the files of the working tree (the committed run of params.yaml)


def _show(root: Path, ref: str, path: str) -> str:
    if ref == WORKSPACE:
        return (Path(root) / path).read_text()
    return _git(root, "show", f"{ref}:{path}")


def _read(root: Path, ref: str, path: str) -> Any | None:
    try:
        return json.loads(_show(root, ref, path))
    except (subprocess.CalledProcessError, OSError):
        return None


def seed_row(root: Path, ref: str, models: tuple[str, ...]) -> dict:
    """What one experiment measured for each reported model, read from its committed metric files."""
    params = _yaml().load(_show(root, ref, "params.yaml"))
    row: dict[str, Any] = {"seed": params["base"]["seed"], "experiment": ref.rsplit("/", 1)[-1]}
    if ref == WORKSPACE:  # the committed run: its code is the commit that holds these files
        row["date"] = time.strftime("%Y-%m-%d")
    else:
        row["baseline_commit"] = ref.split("/")[2] + ref.split("/")[3]
        row["date"] = _git(root, "log", "-1", "--format=%cs", ref).strip()
    for model in models:
        train = _read(root, ref, f"metrics/train/{model}.json") or {}
        evaluate = _read(root, ref, f"metrics/evaluate/{model}.json") or {}
        robust = _read(root, ref, f"metrics/robustness/{model}.json") or {}
        row[model] = {
            "test_accuracy": evaluate.get("accuracy"),
            "test_accuracy_ci": evaluate.get("accuracy_ci"),
            "test_roc_auc": evaluate.get("roc_auc"),
            "test_ece": (evaluate.get("calibration") or {}).get("ece"),
            "robust_accuracy": robust.get("robust_accuracy"),
            "robustness": {k: v["accuracy"] for k, v in (robust.get("scores") or {}).items()},
            "epochs_run": train.get("epochs_run"),
            "train_minutes": None if train.get("train_seconds") is None else round(train["train_seconds"] / 60, 2),
            "machine": train.get("machine"),
            "test_images": evaluate.get("n"),
            "ece_uncalibrated": (evaluate.get("calibration") or {}).get("ece_uncalibrated"),
            "operating_points": {
                name: point["test"] for name, point in (evaluate.get("operating_points") or {}).items()
            },
            "ood": {name: value for name, value in (evaluate.get("ood") or {}).items() if isinstance(value, dict)},
        }
    return row


def _mean_sd(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}  # fmt: skip


def record(root: Path, recipe: Recipe, *, workspace: bool = False) -> Path:
    """results/<recipe>.json: every seed's metrics (newest experiment per seed) and their mean and sd; with
    `workspace`, the working tree's metrics instead (the committed run of params.yaml, i.e. cpu-quick)."""
    rows = {}
    if workspace:
        row = seed_row(root, WORKSPACE, recipe.report)
        rows[row["seed"]] = row
    for seed in () if workspace else recipe.seeds:
        refs = experiment_refs(root, recipe.experiment(seed))
        if refs:
            rows[seed] = seed_row(root, refs[0], recipe.report)
    if not rows:
        raise RealfakeError(f"recipe {recipe.name}: no experiments {recipe.name}-seed*; run `{recipe.command()}`")
    summary = {
        model: {
            key: _mean_sd([row[model][key] for row in rows.values()])
            for key in ("test_accuracy", "test_roc_auc", "test_ece", "robust_accuracy", "train_minutes")
        }
        for model in recipe.report
    }
    result = {
        "recipe": recipe.name,
        "description": recipe.description,
        "command": "make repro" if workspace else recipe.command(tuple(rows)),
        "computed_on": "the test split of the archive each run read (see data in its params); CIFAKE (this archive)",
        "seeds": list(rows.values()),
        "summary": summary,
    }
    path = Path(root) / RESULTS / f"{recipe.name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
