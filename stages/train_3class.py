"""Stage `train_3class`: retrain with three classes (real / Stable Diffusion / DCGAN) through the train stage's code.

Train and validation: the prepared real and SD splits plus the generated DCGAN train images, of which
`train_3class.val_fraction` is held out for validation. The test split is not read here.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, also inside `dvc exp run --temp` copies

from train import load_split, train_and_save  # noqa: E402  (stages/ is on sys.path: one training path for all)

from realfake import stage, tracking  # noqa: E402
from realfake.errors import DataError  # noqa: E402
from realfake.fileio import load_arrays  # noqa: E402
from realfake.params import load_params  # noqa: E402
from realfake.threeclass import three_class_splits  # noqa: E402


def load_generated(paths, image_size: int):
    path = paths.generated_split("train")
    if not path.is_file():
        raise DataError(f"{path}: DCGAN images not found; make them with `dvc repro generate`")
    images = load_arrays(path)["images"]
    if images.shape[1:] != (image_size, image_size, 3):
        raise DataError(f"{path}: images are {images.shape}, expected (N, {image_size}, {image_size}, 3)")
    return images


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "prepare", "train", "train_3class"])
    name = params.train_3class.model
    params = load_params(args.params, sections=["base", "prepare", "train", "train_3class", f"models.{name}"])
    logged = {"seed": params.base.seed, "train": params.raw["train"], "train_3class": params.raw["train_3class"],
              "model": params.raw["models"][name]}  # fmt: skip
    with tracking.stage_run(
        "train_3class", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=logged,
        run_name=f"train_3class@{name}",
    ):  # fmt: skip
        size = params.base.image_size
        train, val = three_class_splits(
            load_split(paths, "train", size), load_split(paths, "val", size), load_generated(paths, size),
            val_fraction=params.train_3class.val_fraction, augmentations=params.prepare.augment, seed=params.base.seed,
        )  # fmt: skip
        tracking.log_metrics({"train": train.counts(), "val": val.counts()}, prefix="images.")
        train_and_save(paths, params, name, train, val, stage_name="train_3class")


if __name__ == "__main__":
    stage.run(main, description=__doc__, root=ROOT)
