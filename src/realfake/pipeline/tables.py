"""The results tables: docs/results.md, the README's headline table, the measured tables of
docs/detector-in-the-wild.md and the accurate-and-robust frontier of docs/fast-detector.md (between their markers),
all from results/*.json."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from realfake.errors import RealfakeError
from realfake.pipeline.recipe_files import RECIPES, RESULTS, load_recipe

RESULTS_DOC = Path("docs") / "results.md"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


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
            machines = {readable_machine(row[model].get("machine")) for row in result["seeds"]} - {None}
            rows.append([
                f"`{recipe.name}`", model, _fmt(stats["test_accuracy"]), _fmt(stats["test_roc_auc"]),
                _fmt(stats["test_ece"]), _fmt(stats["robust_accuracy"], 3), _fmt(stats["train_minutes"], 1),
                f"`{result['command']}`" + ("" if not machines else f" ({'; '.join(sorted(machines))})"),
            ])  # fmt: skip
    return rows


def markdown(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


def readable_machine(name: str | None) -> str | None:
    """'2-core Intel(R) Xeon(R) Processor CPU' (as the CPU names itself) -> '2-core Intel Xeon CPU'."""
    if name is None:
        return None
    return " ".join(name.replace("(R)", "").replace("(TM)", "").replace(" Processor", "").split())


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


# One detector both accurate and robust: (what, how to read it from a seed's row, at least (>=) or at most (<=), goal)
FRONTIER_GOALS = (
    ("test accuracy", lambda s: s["test_accuracy"], ">=", 0.98),
    ("ROC-AUC", lambda s: s["test_roc_auc"], ">=", 0.998),
    ("ECE", lambda s: s["test_ece"], "<=", 0.01),
    ("robust accuracy", lambda s: s["robust_accuracy"], ">=", 0.95),
    ("jpeg_50", lambda s: s["robustness"].get("jpeg_50"), ">=", 0.95),
    ("downscale_2", lambda s: s["robustness"].get("downscale_2"), ">=", 0.93),
    ("blur_1", lambda s: s["robustness"].get("blur_1"), ">=", 0.93),
    ("downscale_2+jpeg_75", lambda s: s["robustness"].get("downscale_2+jpeg_75"), ">=", 0.93),
)
FRONTIER_DOC = Path("docs") / "fast-detector.md"
FRONTIER_START, FRONTIER_END = "<!-- frontier:start -->", "<!-- frontier:end -->"


def frontier_table(root: Path) -> str:
    """Every recorded recipe's fast detectors against the goals of one detector both accurate and robust: the mean
    over its seeds per goal (✓ = met), and the longest training of any seed (the goal: 60 minutes each)."""
    rows = []
    for path in sorted((Path(root) / RESULTS).glob("*.json")):
        result = json.loads(path.read_text())
        for model in result["summary"]:
            seeds = [row[model] for row in result["seeds"]]
            if not model.startswith("fast") or any(s.get("robust_accuracy") is None for s in seeds):
                continue
            cells = []
            for _, read, direction, goal in FRONTIER_GOALS:
                values = [read(s) for s in seeds]
                if any(v is None for v in values):
                    cells.append("-")
                    continue
                value = statistics.fmean(values)
                met = value >= goal if direction == ">=" else value <= goal
                cells.append(f"{value:.4f}" + (" ✓" if met else ""))
            longest = max(s["train_minutes"] for s in seeds)
            cells.append(f"{longest:.1f}" + (" ✓" if longest <= 60 else ""))
            rows.append([f"`{result['recipe']}` {model}", str(len(seeds)), *cells])
    header = ["recipe, model", "seeds", *(f"{name} ({d} {goal})" for name, _, d, goal in FRONTIER_GOALS),
              "longest seed, train min (<= 60)"]  # fmt: skip
    return (
        "Written by `make results` from `results/*.json`: means over the recorded seeds on the archive's test split "
        "(robustness columns: 2,000 test images each, real and fake alike perturbed); ✓ = the goal met.\n\n"
        + markdown(rows, header)
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
    if (root / FRONTIER_DOC).is_file():
        _replace_between(root / FRONTIER_DOC, FRONTIER_START, FRONTIER_END, frontier_table(root))

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
