"""Markdown rendering of the pipeline's reports (computing the numbers is the other modules' business)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from realfake.evaluation.cross import sources_of


def format_share(score: Mapping) -> str:
    """A source score as "0.943 [0.93, 0.95] (n=5000)": share correct, its interval, the number of images."""
    lo, hi = score["ci"]
    return f"{score['share_correct']:.3f} [{lo:.2f}, {hi:.2f}] (n={score['n']})"


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    def row(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(cell).replace("|", r"\|") for cell in cells) + " |"

    return "\n".join([row(header), "|" + "---|" * len(header), *(row(cells) for cells in rows)]) + "\n"


def cross_evaluation_table(scores: Mapping[str, Mapping[str, dict]]) -> str:
    """Markdown table of the share correct: a row per model, a column per test source ("n/a": not scored)."""
    sources = sources_of(scores)
    rows = [
        [model, *(format_share(by_source[s]) if s in by_source else "n/a" for s in sources)]
        for model, by_source in scores.items()
    ]
    return markdown_table(["model", *sources], rows)


def confusion_table(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """Markdown confusion matrix: a row per actual class, a column per predicted class."""
    names = [str(name) for name in class_names]
    rows = [[f"actual {name}", *counts] for name, counts in zip(names, matrix, strict=True)]
    return markdown_table(["", *(f"predicted {name}" for name in names)], rows)


def evaluation_text(name: str, report: Mapping, classification_text: str) -> str:
    """reports/evaluate/<name>.txt: the classification report, then calibration, operating points and OOD."""
    cal = report["calibration"]
    lines = [
        f"{name} on {report['computed_on']}, n={report['n']}",
        "",
        classification_text.rstrip(),
        "",
        f"ROC-AUC {report['roc_auc']:.4f}; accuracy {report['accuracy']:.4f} at P(fake) >= {report['threshold']:g}",
        f"Calibration: ECE {cal['ece']:.4f} ({cal['bins']} bins; {cal['ece_uncalibrated']:.4f} before the "
        f"temperature {cal['temperature']:.3f}), Brier {cal['brier']:.4f}",
        "",
        "Operating points (threshold chosen on validation real images):",
    ]
    for point_name, point in report["operating_points"].items():
        test = point["test"]
        lines.append(
            f"  {point_name}: threshold {test['threshold']:.4f} -> test false-positive rate {test['fpr']:.4f}, "
            f"recall on fakes {test['recall']:.4f}"
        )
    ood = report["ood"]
    lines += ["", f"Out of distribution (score above the validation {ood['percentile']:g}th percentile):"]
    for set_name, values in ood.items():
        if isinstance(values, Mapping):
            auc = values.get("auc_vs_cifake_test")
            lines.append(
                f"  {set_name}: {values['flagged_share']:.3f} of {values['images']} flagged"
                + ("" if auc is None else f"; AUC against CIFAKE test {auc:.4f}")
            )
    return "\n".join(lines) + "\n"


def robustness_table(by_model: Mapping[str, Mapping]) -> str:
    """Accuracy and ROC-AUC with their intervals, one row per model, one column per set, then robust accuracy."""
    columns = list(dict.fromkeys(name for result in by_model.values() for name in result["scores"]))
    rows = []
    for model, result in by_model.items():
        cells = []
        for name in columns:
            s = result["scores"].get(name)
            if s is None:
                cells.append("n/a")
                continue
            (alo, ahi), auc, ci = s["accuracy_ci"], s["roc_auc"], s["roc_auc_ci"]
            auc_text = "n/a" if auc is None else f"{auc:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")
            cells.append(f"acc {s['accuracy']:.3f} [{alo:.3f}, {ahi:.3f}]<br>AUC {auc_text}")
        robust = result["robust_accuracy"]
        rows.append([model, *cells, "n/a" if robust is None else f"**{robust:.3f}**"])
    return markdown_table(["model", *columns, "robust accuracy (mean over perturbations)"], rows)


def robustness_text(by_model: Mapping[str, Mapping], *, computed_on: str, threshold: float, confidence: float) -> str:
    return (
        f"# Robustness: binary models under perturbations\n\nComputed on {computed_on}; every perturbation is "
        f"applied alike to real and fake images (a chain such as downscale_2+jpeg_75 applies its steps in order). "
        f"Accuracy at P(fake) >= {threshold} and ROC-AUC, with {confidence:.0%} bootstrap intervals; the robust "
        "accuracy is the mean accuracy over all perturbed columns.\n\n" + robustness_table(by_model)
    )


def cross_evaluation_text(
    scores: dict, confusion: dict, warnings: dict, *, threshold: float, confidence: float, files: list[str]
) -> str:
    """reports/cross_evaluate.md: what was scored and how, the share-correct table, the binary detectors' warnings
    per source (the unseen-generator column), and each 3-class model's confusion."""
    binary = ", ".join(name for name in scores if name not in confusion)
    three = ", ".join(confusion)
    text = (
        "# Cross-evaluation: every classifier on every test source\n\n"
        f"Share of each source's images a model gets right, its {confidence:.0%} Wilson interval, and the "
        "number of images. Sources: `real` and `sd_fake` are CIFAKE's test split (real photos and Stable "
        f"Diffusion fakes, {files[0]}); `dcgan_fake` are the DCGAN's test fakes "
        f"({files[1]}), a kind of fake the binary models never saw in training.\n\n"
        f'"Correct" for a binary model ({binary}) means P(fake) >= {threshold} on a fake of either kind and '
        f"P(fake) < {threshold} on a real image; for a 3-class model ({three}) it means the most probable "
        "class is exactly the source's kind (real, sd_fake or dcgan_fake).\n\n"
        + cross_evaluation_table(scores)
        + "\n## Does a binary detector at least warn on an unseen generator?\n\n"
        f"Share of each source's images a detector calls fake (P(fake) >= {threshold}) *or* flags out of "
        "distribution (OOD score above its cutoff, the `detector.ood_percentile` of validation scores), and in "
        "brackets the share flagged out of distribution alone. On `dcgan_fake` higher is better (a warning); on "
        "`real` it is the false-alarm rate of the same rule.\n\n" + warnings_table(warnings)
    )
    for name, matrix in confusion.items():
        text += f"\n## {name}: confusion matrix over all sources\n\n" + confusion_table(
            matrix["matrix"], matrix["labels"]
        )
    return text


def warnings_table(warnings: Mapping[str, Mapping[str, dict]]) -> str:
    """Markdown: one row per binary detector, one column per source: share called fake or OOD (share OOD)."""
    sources = list(dict.fromkeys(source for by_source in warnings.values() for source in by_source))
    rows = [
        "| model | " + " | ".join(sources) + " |",
        "|---|" + "---|" * len(sources),
    ]
    for model, by_source in warnings.items():
        cells = [
            f"{by_source[s]['share_fake_or_ood']:.3f} ({by_source[s]['share_flagged_ood']:.3f})"
            if s in by_source
            else "-"
            for s in sources
        ]
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def model_card(card: Mapping) -> str:
    """MODEL_CARD.md of a shipped detector, from its card data (recipes.ship): recipe, data, test metrics with
    intervals, calibration, operating points, robustness, out-of-distribution separation, and the limits."""
    test, train, data = card["test"], card["train"], card["data"] or {}
    acc_lo, acc_hi = test["accuracy_ci"]
    auc_lo, auc_hi = test["roc_auc_ci"]
    cal, ood = test["calibration"], test["ood"]
    sizes, shifts = data.get("sizes", {}), card["params"]["tta_max_shift"]
    points = "\n".join(
        f"| {name} | {p['test']['threshold']:.4f} | {p['val']['fpr']:.4f} | {p['test']['fpr']:.4f} | "
        f"{p['test']['recall']:.4f} |"
        for name, p in test["operating_points"].items()
    )
    robust = " | ".join(f"{v:.3f}" for v in card["robustness"].values())
    columns = " | ".join(card["robustness"])
    return f"""# Model card: realfake's shipped detector

`fast.keras` (with `fast.detector.npz`: operating points and out-of-distribution statistics), loaded by
`realfake predict` when no pipeline model of your own exists, or with `realfake.load_model`.

## What it is
The fast detector (`models.fast`: space-to-depth, widths {list(card["params"]["stage_filters"])},
{train["parameters"]:,} parameters) trained by the recipe `{card["recipe"]}` (experiment `{card["experiment"]}`,
seed {card["seed"]}), with test-time flips and {shifts}-pixel shifts and a temperature of {cal["temperature"]:.3f}
inside the model. Reproduce: `{card["command"]}`, then `make ship`.

## Data
CIFAKE (REAL = CIFAR-10 photos, FAKE = Stable Diffusion 1.4), 32x32 JPEGs: every distinct train image of the archive
the run read ({sizes.get("train", "?"):,} train, {sizes.get("val", "?"):,} validation images), duplicates collapsed
and test overlaps dropped before the split. Test: the archive's test split ({test["n"]:,} images, half real, half
fake), which selected nothing. {train["epochs_run"]} epochs in {train["train_seconds"] / 60:.1f} training minutes on
{train.get("machine", "a CPU")}; the validation split chose epoch {train["best_epoch"]}.

## Test metrics
| accuracy [95% CI] | ROC-AUC [95% CI] | ECE (15 bins) | ECE before the temperature | Brier |
|---|---|---|---|---|
| {test["accuracy"]:.4f} [{acc_lo:.4f}, {acc_hi:.4f}] | {test["roc_auc"]:.4f} [{auc_lo:.4f}, {auc_hi:.4f}] | \
{cal["ece"]:.4f} | {cal["ece_uncalibrated"]:.4f} | {cal["brier"]:.4f} |

Operating points (thresholds chosen on validation real images; `realfake predict --max-fpr RATE`):

| point | threshold | validation false-positive rate | test false-positive rate | test recall on fakes |
|---|---|---|---|---|
{points}

Robustness (accuracy on {card.get("robustness_images", 2000):,} test images, real and fake alike perturbed; robust
accuracy = the mean over the perturbations: {card["robust_accuracy"]:.3f}):

| {columns} |
|{"---|" * len(card["robustness"])}
| {robust} |

Out of distribution: its score separates CIFAKE test images from photographs resized to 32x32 with AUC
{ood["photo_crops"]["auc_vs_cifake_test"]:.3f} (flags {ood["photo_crops"]["flagged_share"]:.0%} of them) and from
CIFAKE images downscaled 2x with AUC {ood["cifake_downscaled_2x"]["auc_vs_cifake_test"]:.3f}; it flags
{ood["cifake_test"]["flagged_share"]:.1%} of CIFAKE test images.

## Limits
- Trained and measured on 32x32 CIFAKE-like images only: CIFAR-10 photos and Stable Diffusion 1.4 images saved as
  JPEG quality 75. Other generators, other subjects and other encodings are untested.
- Photos of other sizes are cropped and resized to 32x32; resized photos are out of its distribution, and its
  accuracy on CIFAKE images merely downscaled 2x and back is {card["robustness"].get("downscale_2", float("nan")):.3f}.
  `realfake predict` flags every resampled image and warns.
- Blur and downscaling remove the high-frequency cues it relies on (see the robustness row); the `fast-robust`
  recipe trains a detector for such inputs.
- Its probabilities are calibrated on CIFAKE's validation split, not on the images you bring.
"""
