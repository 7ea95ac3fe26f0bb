"""Named recipes: params overrides in a file (recipes/<name>.yaml), run as named DVC experiments, recorded as results.

    python -m realfake.pipeline.recipes run fast-30min --seeds 42 1 2   # one `dvc exp run --temp` per seed
    python -m realfake.pipeline.recipes record fast-30min               # results/fast-30min.json from those runs
    python -m realfake.pipeline.recipes table                           # docs/results.md and the README's table
    python -m realfake.pipeline.recipes ship fast-30min                 # the recipe's model into the package

(`make exp RECIPE=... SEEDS=...`, `make record RECIPE=...`, `make results`, `make ship` call these.)

A recipe file holds `description`, optional `targets` (the stages to run; default all), `seeds`, `report` (the
models whose metrics make its results), `set` (params overrides in params.yaml's dotted keys) and, for the reference
study, `published` (the figures it reported). Experiments are named `<recipe>-seed<N>`. Every number in the results
comes from those experiments' committed metric files, read back from git (DVC keeps each experiment as a git ref).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from realfake.errors import ParamsError, RealfakeError
from realfake.evaluation.reports import model_card
from realfake.fileio import atomic_path
from realfake.params import load_params
from realfake.paths import STATE_DIR_ENV, ProjectPaths

log = logging.getLogger(__name__)

RECIPES, RESULTS = "recipes", "results"
RESULTS_DOC = Path("docs") / "results.md"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
SHIPPED = Path("src") / "realfake" / "serving" / "detector"


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


def check(root: Path, recipe: Recipe) -> None:
    """Refuse a recipe whose overrides do not make a valid params.yaml, before any experiment starts."""
    params = _yaml().load((Path(root) / "params.yaml").read_text())
    merged = apply_overrides(params, recipe.overrides, where=f"recipes/{recipe.name}.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(json.dumps(merged))
        load_params(path)


def exp_command(recipe: Recipe, seed: int) -> list[str]:
    """`dvc exp run --temp -n <recipe>-seed<N> -S key=value ... [targets]` (values in YAML flow form, as JSON)."""
    args = ["dvc", "exp", "run", "--temp", "-n", recipe.experiment(seed), "-S", f"base.seed={seed}"]
    for key, value in recipe.overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]
    return args + list(recipe.targets)


def run(root: Path, recipe: Recipe, seeds: tuple[int, ...]) -> None:
    """One DVC experiment per seed, one after another (each in a temporary copy: the workspace is left as it is)."""
    check(root, recipe)
    # an interrupted experiment resumes from its last epoch when rerun, although --temp gives it a new copy
    env = {**os.environ, STATE_DIR_ENV: str(ProjectPaths(Path(root).resolve()).state)}
    for seed in seeds:
        command = exp_command(recipe, seed)
        log.info("running %s", " ".join(command))
        started = time.monotonic()
        if subprocess.run(command, cwd=root, env=env).returncode != 0:
            raise RealfakeError(f"recipe {recipe.name}: `{' '.join(command)}` failed (see above)")
        log.info("%s finished in %.1f minutes", recipe.experiment(seed), (time.monotonic() - started) / 60)


# ----------------------------------------------------------------------------- reading experiments back from git


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


# ----------------------------------------------------------------------------- tables


def _fmt(stat: dict | None, digits: int = 4) -> str:
    if not stat:
        return "-"
    if stat["n"] == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def headline_rows(root: Path) -> list[list[str]]:
    """One row per (recorded recipe, reported model), in the order of the recipe files."""
    rows = []
    for path in sorted((Path(root) / RECIPES).glob("*.yaml")):
        recipe = load_recipe(root, path.stem)
        recorded = Path(root) / RESULTS / f"{recipe.name}.json"
        if not recorded.is_file():
            rows.append([f"`{recipe.name}`", "not run yet", "-", "-", "-", "-", "-", f"`{recipe.command()}`"])
            continue
        result = json.loads(recorded.read_text())
        for model, stats in result["summary"].items():
            machines = {row[model].get("machine") for row in result["seeds"]} - {None}
            rows.append([
                f"`{recipe.name}`", model, _fmt(stats["test_accuracy"]), _fmt(stats["test_roc_auc"]),
                _fmt(stats["test_ece"]), _fmt(stats["robust_accuracy"], 3), _fmt(stats["train_minutes"], 1),
                f"`{result['command']}`" + ("" if not machines else f" ({'; '.join(sorted(machines))})"),
            ])  # fmt: skip
    return rows


def markdown(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


HEADER = ["recipe", "model", "test accuracy", "ROC-AUC", "ECE", "robust accuracy", "train min", "reproduce (machine)"]


def published_table(root: Path) -> str:
    recipe = load_recipe(root, "reference-study")
    rows = [[name, str(v.get("accuracy", "-")), str(v.get("macro_f1", "-")), v.get("notes", "")]
            for name, v in recipe.published.items()]  # fmt: skip
    return markdown(rows, ["model (reference study, its CIFAKE test set)", "accuracy", "macro F1", "notes"])


# The robust-detector targets: (robustness column, target accuracy); "jpeg 50-90" = every JPEG column 50..90.
WILD_TARGETS = (
    ("none", 0.97), ("jpeg_90", 0.95), ("jpeg_70", 0.95), ("jpeg_50", 0.95), ("jpeg_30", 0.93), ("noise_5", 0.95),
    ("downscale_2", 0.90), ("blur_1", 0.90), ("downscale_2+jpeg_75", 0.88),
)  # fmt: skip
WILD_DOC = Path("docs") / "detector-in-the-wild.md"
WILD_START, WILD_END = "<!-- measured:start -->", "<!-- measured:end -->"


def wild_tables(root: Path) -> str:
    """Robustness against its targets, calibration, operating points and OOD separation of every recorded recipe."""
    results = [json.loads(p.read_text()) for p in sorted((Path(root) / RESULTS).glob("*.json"))]
    rows, calibration, points, ood = [], [], [], []
    for result in results:
        for model in result["summary"]:
            seeds = [row[model] for row in result["seeds"]]
            label = f"`{result['recipe']}` {model} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"

            def mean(values):
                values = [v for v in values if v is not None]
                return statistics.fmean(values) if values else None

            cells = []
            for column, target in WILD_TARGETS:
                value = mean([s["robustness"].get(column) for s in seeds])
                cells.append("-" if value is None else f"{value:.3f}" + (" ✓" if value >= target else ""))
            robust = mean([s["robust_accuracy"] for s in seeds])
            rows.append([label, *cells, "-" if robust is None else f"{robust:.3f}"])
            ece, before = mean([s["test_ece"] for s in seeds]), mean([s.get("ece_uncalibrated") for s in seeds])
            if ece is not None:
                calibration.append([label, f"{ece:.4f}", "-" if before is None else f"{before:.4f}"])
            for name in seeds[0].get("operating_points") or {}:
                fpr = mean([s["operating_points"][name]["fpr"] for s in seeds])
                recall = mean([s["operating_points"][name]["recall"] for s in seeds])
                points.append([label, name, f"{fpr:.4f}", f"{recall:.4f}"])
            if seeds[0].get("ood"):
                photo = mean([s["ood"]["photo_crops"]["auc_vs_cifake_test"] for s in seeds])
                down = mean([s["ood"]["cifake_downscaled_2x"]["auc_vs_cifake_test"] for s in seeds])
                flagged = mean([s["ood"]["photo_crops"]["flagged_share"] for s in seeds])
                inside = mean([s["ood"]["cifake_test"]["flagged_share"] for s in seeds])
                ood.append([label, f"{photo:.3f}", f"{flagged:.2f}", f"{down:.3f}", f"{inside:.3f}"])
    header = ["recipe, model", *(f"{c} (>= {t})" for c, t in WILD_TARGETS), "robust accuracy"]
    return (
        "Written by `make results` from `results/*.json` (means over the recorded seeds; ✓ = the target met). "
        "Accuracy on 2,000 test images per column, real and fake alike perturbed:\n\n"
        + markdown(rows, header)
        + "\nCalibration on the test split (15 bins):\n\n"
        + markdown(calibration, ["recipe, model", "ECE", "ECE before the temperature"])
        + "\nThresholds chosen on validation real images, on the test split:\n\n"
        + markdown(points, ["recipe, model", "operating point", "test false-positive rate", "test recall on fakes"])
        + "\nOut-of-distribution score (OOD = positive):\n\n"
        + markdown(
            ood,
            [
                "recipe, model",
                "AUC, resized photo crops vs CIFAKE test",
                "photo crops flagged",
                "AUC, CIFAKE downscaled 2x vs CIFAKE test",
                "CIFAKE test flagged",
            ],
        )  # fmt: skip
    )


def _replace_between(path: Path, start: str, end: str, body: str) -> None:
    text = path.read_text()
    if start not in text or end not in text:
        raise RealfakeError(f"{path}: the markers {start} / {end} are missing")
    before, rest = text.split(start, 1)
    path.write_text(f"{before}{start}\n{body}{end}{rest.split(end, 1)[1]}")


def write_tables(root: Path) -> None:
    """docs/results.md (every recorded recipe, per seed) and the README's headline table, between its markers."""
    root = Path(root)
    headline = markdown(headline_rows(root), HEADER)
    _replace_between(root / "README.md", README_START, README_END, headline)
    if (root / WILD_DOC).is_file():
        _replace_between(root / WILD_DOC, WILD_START, WILD_END, wild_tables(root))

    parts = [
        "# Results\n\nWritten by `make results` from `results/*.json`, which `make record RECIPE=<name>` writes "
        "from the recipe's DVC experiments. Every figure is measured on the test split of the archive the run read "
        "(CIFAKE (this archive) unless said otherwise), never used to select anything; mean ± sd over seeds.\n",
        "## Headline\n\n" + headline,
        "## The reference study's own figures\n\nAs the reference study reported them, on CIFAKE's official test "
        "set (20,000 images), with ImageNet weights on a GPU:\n\n" + published_table(root),
    ]
    for path in sorted((root / RESULTS).glob("*.json")):
        result = json.loads(path.read_text())
        parts.append(f"## `{result['recipe']}`\n\n{result['description']}\n\nReproduce: `{result['command']}`\n")
        for model in result["summary"]:
            columns = list(dict.fromkeys(k for row in result["seeds"] for k in row[model]["robustness"]))
            header = ["seed", "test accuracy [95% CI]", "ROC-AUC", "ECE", "epochs", "train min", *columns]
            rows = []
            for row in result["seeds"]:
                m = row[model]
                ci = m["test_accuracy_ci"]
                acc = "-" if m["test_accuracy"] is None else f"{m['test_accuracy']:.4f}" + (
                    "" if not ci else f" [{ci[0]:.4f}, {ci[1]:.4f}]")  # fmt: skip
                rows.append([
                    str(row["seed"]), acc, "-" if m["test_roc_auc"] is None else f"{m['test_roc_auc']:.4f}",
                    "-" if m["test_ece"] is None else f"{m['test_ece']:.4f}", str(m["epochs_run"]),
                    str(m["train_minutes"]), *(f"{m['robustness'].get(c, float('nan')):.3f}" for c in columns),
                ])  # fmt: skip
            parts.append(f"### {model}\n\n" + markdown(rows, header))
    (root / RESULTS_DOC).parent.mkdir(exist_ok=True)
    (root / RESULTS_DOC).write_text("\n".join(parts))


# ----------------------------------------------------------------------------- shipping a model


def ship(root: Path, recipe: Recipe, *, model: str, seed: int) -> Path:
    """Copy `model` of the recipe's experiment for `seed` from DVC's cache into the package, with its card data."""
    root = Path(root)
    refs = experiment_refs(root, recipe.experiment(seed))
    if not refs:
        raise RealfakeError(f"no experiment {recipe.experiment(seed)}; run `{recipe.command((seed,))}`")
    lock = _yaml().load(_git(root, "show", f"{refs[0]}:dvc.lock"))
    outs = {o["path"]: o["md5"] for o in lock["stages"][f"train@{model}"]["outs"] if "md5" in o}
    target = root / SHIPPED
    target.mkdir(parents=True, exist_ok=True)
    for suffix in (".keras", ".detector.npz"):
        md5 = outs[f"models/{model}{suffix}"]
        cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        if not cached.is_file():
            raise RealfakeError(f"{cached}: not in DVC's cache; `dvc exp apply {recipe.experiment(seed)}` then "
                                f"`dvc pull` or rerun `{recipe.command((seed,))}`")  # fmt: skip
        with atomic_path(target / f"fast{suffix}") as tmp:
            shutil.copyfile(cached, tmp)
    row = seed_row(root, refs[0], (model,))
    evaluate = _read(root, refs[0], f"metrics/evaluate/{model}.json")
    train = _read(root, refs[0], f"metrics/train/{model}.json")
    card = {
        "recipe": recipe.name,
        "experiment": row["experiment"],
        "seed": seed,
        "command": recipe.command((seed,)),
        "model_section": model,
        "params": _yaml().load(_git(root, "show", f"{refs[0]}:params.yaml"))["models"][model],
        "data": _read(root, refs[0], "metrics/prepare.json"),
        "train": train,
        "test": evaluate,
        "robustness": row[model]["robustness"],
        "robust_accuracy": row[model]["robust_accuracy"],
    }
    with atomic_path(target / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=1) + "\n")
    with atomic_path(target / "MODEL_CARD.md") as tmp:
        tmp.write_text(model_card(card))
    return target


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
        if name == "ship":
            sub.add_argument("--model", default="fast", help="the models.<name> section to ship (default: fast)")
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
            run(args.root, recipe, seeds)
        elif args.command == "record":
            print(record(args.root, dataclasses.replace(recipe, seeds=seeds), workspace=args.workspace))
        else:
            print(ship(args.root, recipe, model=args.model, seed=seeds[0]))
    except (RealfakeError, subprocess.CalledProcessError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
