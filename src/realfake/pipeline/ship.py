"""Shipping a model: one recipe experiment's model, from DVC's cache into the package as the detector named after the
recipe (src/realfake/serving/detector/<recipe>/), with its card data; files named after the model (`<model>.keras`,
`<model>.detector.npz`, `<model>.onnx`). The last one shipped becomes the default (detector/DEFAULT names it); the
others stay there, reachable as `--model shipped:<recipe>`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from realfake.errors import RealfakeError
from realfake.fileio import atomic_path
from realfake.pipeline.recipe_files import Recipe, _yaml
from realfake.pipeline.results import _git, _read, experiment_refs, seed_row

log = logging.getLogger(__name__)

SHIPPED = Path("src") / "realfake" / "serving" / "detector"


def shipped_model(target: Path) -> str | None:
    """The models.<name> section a shipped detector's folder holds now (its card.json says), or None."""
    try:
        return json.loads((target / "card.json").read_text()).get("model_section")
    except (OSError, ValueError):
        return None


MAX_FILE_BYTES = 2 * 1024 * 1024  # each shipped file: the package stays small enough to install anywhere


def _check_size(path: Path) -> None:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise RealfakeError(f"{path}: {path.stat().st_size:,} bytes, over the {MAX_FILE_BYTES:,} a shipped file may "
                            "take; ship a smaller model")  # fmt: skip


def _export_onnx(keras_path: Path, onnx_path: Path) -> None:
    """`<model>.onnx` beside the shipped `.keras` (models.onnx_export, written atomically), at most MAX_FILE_BYTES."""
    from realfake.models.onnx_export import export_onnx

    export_onnx(keras_path, onnx_path)
    _check_size(onnx_path)


def ship(root: Path, recipe: Recipe, *, model: str, seed: int, force: bool = False) -> Path:
    """Copy `model` of the recipe's experiment for `seed` from DVC's cache into the recipe's folder of the package as
    `<model>.keras` and `<model>.detector.npz`, export `<model>.onnx`, write its card data, and make it the default.
    A folder holds one model: when the recipe's folder holds another model now, refuse (unless `force`) rather than
    leave two models and one card that fits neither."""
    root = Path(root)
    target = root / SHIPPED / recipe.name
    current = shipped_model(target)
    if current not in (None, model) and not force:
        raise RealfakeError(f"{target} ships {current} now; shipping {model} would replace its card. Remove "
                            f"{target}/{current}.* and card.json first, or pass --force")  # fmt: skip
    refs = experiment_refs(root, recipe.experiment(seed))
    if not refs:
        raise RealfakeError(f"no experiment {recipe.experiment(seed)}; run `{recipe.command((seed,))}`")
    lock = _yaml().load(_git(root, "show", f"{refs[0]}:dvc.lock"))
    stage = lock["stages"].get(f"train@{model}")
    if stage is None:
        raise RealfakeError(f"experiment {recipe.experiment(seed)} trained no {model} (no train@{model} in dvc.lock)")
    outs = {o["path"]: o["md5"] for o in stage["outs"] if "md5" in o}
    target.mkdir(parents=True, exist_ok=True)
    for suffix in (".keras", ".detector.npz"):
        md5 = outs[f"models/{model}{suffix}"]
        cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        if not cached.is_file():
            raise RealfakeError(f"{cached}: not in DVC's cache; `dvc exp apply {recipe.experiment(seed)}` then "
                                f"`dvc pull` or rerun `{recipe.command((seed,))}`")  # fmt: skip
        with atomic_path(target / f"{model}{suffix}") as tmp:
            shutil.copyfile(cached, tmp)
        _check_size(target / f"{model}{suffix}")
    if current not in (None, model):  # forced: the other model's files go with its card
        for old in target.glob(f"{current}.*"):
            old.unlink()
    _export_onnx(target / f"{model}.keras", target / f"{model}.onnx")
    from realfake.pipeline.model_card import model_card

    row = seed_row(root, refs[0], (model,))
    card = {
        "recipe": recipe.name,
        "experiment": row["experiment"],
        "seed": seed,
        "command": recipe.command((seed,)),
        "model_section": model,
        "files": {"keras": f"{model}.keras", "detector": f"{model}.detector.npz", "onnx": f"{model}.onnx"},
        "params": _yaml().load(_git(root, "show", f"{refs[0]}:params.yaml"))["models"][model],
        "data": _read(root, refs[0], "metrics/prepare.json"),
        "train": _read(root, refs[0], f"metrics/train/{model}.json"),
        "test": _read(root, refs[0], f"metrics/evaluate/{model}.json"),
        "robustness": row[model]["robustness"],
        "robust_accuracy": row[model]["robust_accuracy"],
    }
    with atomic_path(target / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=1) + "\n")
    with atomic_path(target / "MODEL_CARD.md") as tmp:
        tmp.write_text(model_card(card))
    with atomic_path(root / SHIPPED / "DEFAULT") as tmp:
        tmp.write_text(recipe.name + "\n")
    return target
