"""The parent MLflow run of one pipeline execution (a `dvc repro` or `dvc exp run`), made comparable: it carries the
params the experiment changed against params.yaml at HEAD (as params, and the list as the tag `realfake.changed`),
the recipe it ran (`realfake.recipe`: REALFAKE_RECIPE, which `make exp` sets, else the `<recipe>-seed<N>` experiment
name), and the headline metrics of every model its evaluate stages scored (`<model>.test_accuracy`,
`<model>.test_roc_auc`, `<model>.test_ece`, `<model>.robust_accuracy`), so runs compare side by side in MLflow's UI.
A parent run left RUNNING by a killed stage is ended by the next stage that opens the store (`reap`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KIND, PIPELINE = "realfake.kind", "pipeline"  # the tag that tells parent runs from stage runs
RECIPE_ENV = "REALFAKE_RECIPE"  # set by `make exp` / `python -m realfake.pipeline.recipes run`
TAG_RECIPE, TAG_CHANGED = "realfake.recipe", "realfake.changed"
MAX_TAG = 5000  # MLflow's tag values hold at most 8000 characters
# (metrics file, key path, metric name) of the headline per model
HEADLINE = (
    ("evaluate", ("accuracy",), "test_accuracy"),
    ("evaluate", ("roc_auc",), "test_roc_auc"),
    ("evaluate", ("calibration", "ece"), "test_ece"),
    ("robustness", ("robust_accuracy",), "robust_accuracy"),
)


def _yaml_load(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def changed_params(repo_root: Path, params_file: Path | None = None) -> dict[str, str]:
    """{dotted key: new value} of every param that differs from params.yaml at HEAD (git show HEAD:params.yaml);
    {} outside git or when nothing changed. Lists and dicts as JSON."""
    from realfake.pipeline.tracking import flatten

    params_file = params_file or Path(repo_root) / "params.yaml"
    try:
        head = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=repo_root, capture_output=True, text=True,
                              check=True, timeout=30).stdout  # fmt: skip
        old, new = flatten(_yaml_load(head) or {}), flatten(_yaml_load(params_file.read_text()) or {})
    except (subprocess.SubprocessError, OSError, ValueError):
        return {}
    out = {}
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            value = new.get(key, "<removed>")
            out[key] = value if isinstance(value, str) else json.dumps(value)
    return out


def recipe_name(repo_root: Path) -> str | None:
    """REALFAKE_RECIPE, else the recipe whose `<recipe>-seed<N>` the DVC experiment's name is (when that recipe
    file exists), else None."""
    if name := os.environ.get(RECIPE_ENV):
        return name
    match = re.fullmatch(r"(.+)-seed\d+", os.environ.get("DVC_EXP_NAME", ""))
    if match and (Path(repo_root) / "recipes" / f"{match.group(1)}.yaml").is_file():
        return match.group(1)
    return None


def describe(client, run_id: str, repo_root: Path) -> None:
    """Log the changed params and the recipe to a new parent run."""
    changed = changed_params(repo_root)
    if changed:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in changed.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=params[start : start + 100])
    summary = ", ".join(f"{k}={v}" for k, v in changed.items()) or "none (params.yaml at HEAD)"
    client.set_tag(run_id, TAG_CHANGED, summary[:MAX_TAG])
    if recipe := recipe_name(repo_root):
        client.set_tag(run_id, TAG_RECIPE, recipe)


def headline(repo_root: Path, model: str) -> dict[str, float]:
    """`<model>.<metric>` of the headline metrics in metrics/{evaluate,robustness}/<model>.json (missing: left out)."""
    out = {}
    for folder, path, name in HEADLINE:
        try:
            value: Any = json.loads((Path(repo_root) / "metrics" / folder / f"{model}.json").read_text())
        except (OSError, ValueError):
            continue
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{model}.{name}"] = float(value)
    return out


def log_headline(client, run_id: str, repo_root: Path, model: str) -> None:
    """Put `model`'s headline metrics on the parent run (after its evaluate stage wrote them)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in headline(repo_root, model).items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def reap(client, experiment_id: str, host_tag: str, host: str) -> None:
    """End the RUNNING parent runs of this host none of whose stage runs is RUNNING any more (their stages finished,
    or were marked FAILED as orphans): FAILED when a stage failed or was killed, else FINISHED."""
    running = f"attributes.status = 'RUNNING' and tags.`{KIND}` = '{PIPELINE}'"
    parents = client.search_runs([experiment_id], filter_string=f"{running} and tags.`{host_tag}` = '{host}'")
    for parent in parents:
        children = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        if any(child.info.status == "RUNNING" for child in children):
            continue
        failed = any(child.info.status in ("FAILED", "KILLED") for child in children)
        client.set_tag(parent.info.run_id, "realfake.ended_by", "a later stage: none of its stages was running")
        client.set_terminated(parent.info.run_id, "FAILED" if failed else "FINISHED")
        log.warning("MLflow parent run %s (%s) was left RUNNING after its stages ended; marked %s",
                    parent.info.run_id, parent.info.run_name, "FAILED" if failed else "FINISHED")  # fmt: skip
