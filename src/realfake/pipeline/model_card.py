"""MODEL_CARD.md of a shipped detector, from the card data `ship` gathers (recipe, data, test metrics with intervals,
calibration, operating points, robustness, out-of-distribution separation) and its limits."""

from __future__ import annotations

from collections.abc import Mapping

SHIPPED_PREFIX = "shipped"  # as `realfake predict --model shipped:<recipe>` names a shipped detector


def _role(card: Mapping) -> str:
    # not whether it is the default: shipping another detector later must not make this card wrong
    return (f"`realfake predict --model {SHIPPED_PREFIX}:{card['recipe']}` (and `realfake serve`) use it;\n"
            "`realfake detectors` lists the shipped detectors and says which one is used by default.")  # fmt: skip


def _training(params: Mapping, shifts: int) -> str:
    """What its training saw, from the ")" after its seed to its test-time views."""
    views = f"with test-time flips and {shifts}-pixel shifts"
    kinds = [step["kind"] for step in params.get("degrade") or []]
    if not kinds:
        return f", {views}"
    return (f" on clean and randomly degraded copies of its train images\n({', '.join(kinds)}, each with its own "
            f"probability and strength range, alike for real and fake),\n{views}")  # fmt: skip


def _limits_of_degradation(params: Mapping) -> str:
    if params.get("degrade"):
        return (
            "It was trained on degraded copies too: blur, downscaling and re-encoding cost it less than\n"
            "  they cost a detector trained on clean images (see the robustness row), for some clean accuracy."
        )
    return ("Blur and downscaling remove the high-frequency cues it relies on (see the robustness row);\n"
            "  the `fast-robust-long` recipe trains a detector for such inputs.")  # fmt: skip


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
    files, section, name = card["files"], card["model_section"], card["recipe"]
    return f"""# Model card: realfake's shipped detector `{SHIPPED_PREFIX}:{name}`

`{files["onnx"]}` (run by `realfake predict` and `realfake serve` without TensorFlow), exported from `{files["keras"]}`
(with `{files["detector"]}`: operating points and out-of-distribution statistics).
{_role(card)}

## What it is
The fast detector (`models.{section}`: space-to-depth, widths {list(card["params"]["stage_filters"])},
{train["parameters"]:,} parameters) trained by the recipe `{name}` (experiment `{card["experiment"]}`, seed
{card["seed"]}){_training(card["params"], shifts)}
and a temperature of {cal["temperature"]:.3f} inside the model. Reproduce: `{card["command"]}`, then
`make ship MODEL={section} SHIP_RECIPE={name}`.

## Data
CIFAKE (REAL = CIFAR-10 photos, FAKE = Stable Diffusion 1.4), 32x32 JPEGs: every distinct train image of the archive
the run read ({sizes.get("train", "?"):,} train, {sizes.get("val", "?"):,} validation images), duplicates collapsed
and test overlaps dropped before the split. Test: the archive's test split ({test["n"]:,} images, half real, half
fake), which selected nothing. {train["epochs_run"]} epochs in {train["train_seconds"] / 60:.1f} training minutes on
{"a " + train["machine"] if train.get("machine") else "a CPU"}; the validation split chose epoch {train["best_epoch"]}.

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
- {_limits_of_degradation(card["params"])}
- Its probabilities are calibrated on CIFAKE's validation split, not on the images you bring.
"""
