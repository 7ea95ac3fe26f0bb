"""Load params.yaml once into typed, validated objects.

Every error names the offending key (dotted, as `dvc exp run -S` spells it) and the allowed values, and is raised
before any stage does work.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML, YAMLError

from realfake.data.perturb import Degradation, Perturbation
from realfake.errors import ParamsError

AUGMENTATIONS = ("rot90", "hflip")  # pixel-exact image symmetries (data.prepare and data.transforms implement them)
STRATEGIES = ("auto", "default", "mirrored", "data_parallel")
OPTIMIZERS = ("adam", "adamax", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")  # auto = mixed_bfloat16 on CPUs with AMX or AVX512-BF16
MAX_INT = 10**9  # no count of this pipeline (images, epochs, steps) comes near it; larger is a typo
MAX_MINUTES = 7 * 24 * 60.0  # a training budget over a week is a typo


# ----------------------------------------------------------------------------- generic dataclass loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[:-1]:  # the first alternative that takes the value; the last one explains a refusal
            try:
                return _convert(value, alternative, key)
            except ParamsError:
                continue
        return _convert(value, inner[-1], key)
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{key}: {value!r} is not allowed; use one of {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return load_section(tp, value, key)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # nan trains at loss nan, inf overflows: refuse both before any work
            raise ParamsError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_INT:
            raise ParamsError(f"{key}: {value} is out of range; use at most {MAX_INT:,}")
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ParamsError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def load_section(cls: type, raw: Any, key: str):
    """Build dataclass `cls` from a mapping, refusing unknown and missing keys."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ParamsError(f"{key}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(fields))}")
    missing = sorted(fields - set(raw))
    if missing:
        raise ParamsError(f"{key}: missing key(s) {', '.join(f'{key}.{m}' for m in missing)}")
    values = {name: _convert(raw[name], hints[name], f"{key}.{name}") for name in fields}
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check:
        check(key)
    return obj


def require_positive(key: str, **values: float) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ParamsError(f"{key}.{name}: must be greater than 0, got {value}")


def require_at_most(key: str, limit: float, **values: float) -> None:
    for name, value in values.items():
        if value is not None and value > limit:
            raise ParamsError(f"{key}.{name}: must be at most {limit:g}, got {value}")


def require_fraction(key: str, **values: float) -> None:
    for name, value in values.items():
        if not 0 <= value < 1:
            raise ParamsError(f"{key}.{name}: must be in [0, 1), got {value}")


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class BaseParams:
    seed: int
    image_size: int
    mlflow_experiment: str
    registered_model_prefix: str

    def validate(self, key: str) -> None:
        require_positive(key, image_size=self.image_size)
        if self.seed < 0:
            raise ParamsError(f"{key}.seed: must be >= 0, got {self.seed}")


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: Literal["auto", "kaggle", "archive"]
    kaggle_dataset: str
    archive: str | None
    archive_sha256: str | None

    def validate(self, key: str) -> None:
        if self.source != "kaggle" and not self.archive:
            raise ParamsError(
                f"{key}.archive: required when {key}.source is {self.source!r}; set it to the zip's path or URL, "
                f"e.g. dvc exp run -S data.archive=data/cifake.zip"
            )
        sha = self.archive_sha256
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
            raise ParamsError(f"{key}.archive_sha256: expected 64 hex digits or null, got {sha!r}")


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    per_class: int | Literal["all"]
    val_fraction: float
    augment: tuple[str, ...]
    drop_test_overlap: bool

    def validate(self, key: str) -> None:
        if self.per_class != "all":
            require_positive(key, per_class=self.per_class)
        require_fraction(key, val_fraction=self.val_fraction)
        if self.val_fraction == 0:
            raise ParamsError(f"{key}.val_fraction: must be > 0 (model selection needs a validation split)")
        for name in self.augment:
            if name not in AUGMENTATIONS:
                raise ParamsError(f"{key}.augment: unknown augmentation {name!r}; allowed: {', '.join(AUGMENTATIONS)}")
        if len(set(self.augment)) != len(self.augment):
            raise ParamsError(f"{key}.augment: lists an augmentation twice: {list(self.augment)}")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Settings shared by every classifier training (the train matrix and train_3class)."""

    strategy: Literal["auto", "default", "mirrored", "data_parallel"]
    monitor: str
    monitor_mode: Literal["max", "min"]
    early_stopping_patience: int | None
    run_eagerly: bool

    def validate(self, key: str) -> None:
        require_positive(key, early_stopping_patience=self.early_stopping_patience)


@dataclasses.dataclass(frozen=True)
class _Fit:
    epochs: int
    batch_size: int
    optimizer: Literal["adam", "adamax", "adamw", "sgd"]
    learning_rate: float  # the constant rate, or the peak of warmup_cosine
    schedule: Literal["constant", "warmup_cosine"]
    warmup_epochs: float  # warmup_cosine: linear rise from 0 over this many epochs, then cosine decay to 0
    weight_decay: float  # decoupled weight decay per step (0 = none); BatchNorm and biases are exempt
    label_smoothing: float  # binary cross-entropy targets pulled this far towards 0.5 (one-unit models only)
    augment: tuple[str, ...]  # on the fly, per batch; the prepare stage's copies are separate
    max_shift: int  # on the fly: random whole-pixel translations up to this far in y and x (0 = none)
    jit_compile: Literal["auto", True, False]  # XLA for the train step; per model: it speeds some up, slows others
    degrade: tuple[Degradation, ...]  # on the fly, per image: random JPEG / downscale / blur / noise, in order
    max_train_minutes: float | None  # stop before a validation round that would end past this much training time
    validate_every_steps: int | None  # validate (and check the budget) every this many steps; None = every epoch
    test_curve: bool  # score the test split after every epoch for the accuracy-against-time plot; never selects

    def validate(self, key: str) -> None:
        require_positive(
            key, epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            max_train_minutes=self.max_train_minutes, validate_every_steps=self.validate_every_steps,
        )  # fmt: skip
        require_at_most(key, MAX_MINUTES, max_train_minutes=self.max_train_minutes)
        require_at_most(key, 100_000, epochs=self.epochs)
        require_at_most(key, 1.0, learning_rate=self.learning_rate)
        for i, degradation in enumerate(self.degrade):
            try:
                degradation.check()
            except ValueError as exc:
                raise ParamsError(f"{key}.degrade[{i}]: {exc}") from None
        if not isinstance(self.jit_compile, bool) and self.jit_compile != "auto":  # Literal lets 0 and 1 pass
            raise ParamsError(f"{key}.jit_compile: {self.jit_compile!r} is not allowed; use auto, true or false")
        require_fraction(key, label_smoothing=self.label_smoothing)
        if self.weight_decay < 0:
            raise ParamsError(f"{key}.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.max_shift < 0:
            raise ParamsError(f"{key}.max_shift: must be >= 0 pixels, got {self.max_shift}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ParamsError(f"{key}.warmup_epochs: must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        for name in self.augment:
            if name not in AUGMENTATIONS:
                raise ParamsError(f"{key}.augment: unknown augmentation {name!r}; allowed: {', '.join(AUGMENTATIONS)}")


@dataclasses.dataclass(frozen=True)
class CnnParams(_Fit):
    architecture: Literal["cnn"]
    conv_filters: tuple[int, ...]
    kernel_size: int
    pool_size: int
    dense_units: int


@dataclasses.dataclass(frozen=True)
class EfficientNetParams(_Fit):
    architecture: Literal["efficientnet"]
    weights: Literal["imagenet"] | None
    dense_units: int
    kernel_l2: float
    activity_l1: float
    bias_l1: float
    dropout: float

    def validate(self, key: str) -> None:
        super().validate(key)
        require_fraction(key, dropout=self.dropout)


@dataclasses.dataclass(frozen=True)
class ResNetParams(_Fit):
    architecture: Literal["resnet50"]
    weights: Literal["imagenet"] | None
    dense_units: int
    dropout: float
    batchnorm_momentum: float  # the backbone's BatchNorm moving-average momentum (Keras' default: 0.99)

    def validate(self, key: str) -> None:
        super().validate(key)
        require_fraction(key, dropout=self.dropout, batchnorm_momentum=self.batchnorm_momentum)


@dataclasses.dataclass(frozen=True)
class FastParams(_Fit):
    architecture: Literal["fast"]
    stage_filters: tuple[int, ...]  # conv width per resolution stage (32, 16, 8, ... px, divided by space_to_depth)
    convs_per_stage: int
    space_to_depth: int  # block size moved into channels before the first conv; 1 = none
    dropout: float
    flip_tta: bool
    tta_max_shift: int  # test-time: also average over whole-pixel shifts up to this far (0 = none)
    max_parameters: int  # the factory refuses a network larger than this budget

    def validate(self, key: str) -> None:
        super().validate(key)
        require_fraction(key, dropout=self.dropout)
        require_positive(
            key, convs_per_stage=self.convs_per_stage, space_to_depth=self.space_to_depth,
            max_parameters=self.max_parameters,
        )  # fmt: skip
        if not self.stage_filters or min(self.stage_filters) <= 0:
            raise ParamsError(f"{key}.stage_filters: list at least one positive width, got {list(self.stage_filters)}")
        if self.tta_max_shift < 0:
            raise ParamsError(
                f"{key}.tta_max_shift: must be >= 0 pixels (0 = no shifted views), got {self.tta_max_shift}"
            )


ARCHITECTURES = {"cnn": CnnParams, "efficientnet": EfficientNetParams, "resnet50": ResNetParams, "fast": FastParams}
ModelParams = CnnParams | EfficientNetParams | ResNetParams | FastParams


def load_model_params(raw: Any, key: str) -> ModelParams:
    """A models.<name> section, typed by its `architecture`."""
    arch = raw.get("architecture") if isinstance(raw, dict) else None
    if arch not in ARCHITECTURES:
        raise ParamsError(f"{key}.architecture: {arch!r} is not allowed; use one of {', '.join(ARCHITECTURES)}")
    return load_section(ARCHITECTURES[arch], raw, key)


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    threshold: float
    n_bootstrap: int
    confidence: float
    roc_max_points: int
    calibration_bins: int
    ood_photo_crops: int

    def validate(self, key: str) -> None:
        require_positive(
            key, batch_size=self.batch_size, n_bootstrap=self.n_bootstrap, roc_max_points=self.roc_max_points,
            calibration_bins=self.calibration_bins, ood_photo_crops=self.ood_photo_crops,
        )  # fmt: skip
        require_at_most(key, 1_000_000, n_bootstrap=self.n_bootstrap)
        require_fraction(key, threshold=self.threshold, confidence=self.confidence)


@dataclasses.dataclass(frozen=True)
class DcganParams:
    noise_dim: int
    dense_filters: int
    g_filters: tuple[int, ...]
    d_filters: tuple[int, ...]
    kernel_size: int
    dropout: float
    learning_rate: float
    beta_1: float  # Adam's first-moment decay for both networks
    epochs: int
    batch_size: int
    max_train_minutes: float | None  # stop before an epoch that would end past this much training time
    precision: Literal["auto", "float32", "mixed_bfloat16"]
    sample_every: int
    sample_grid: int
    max_images: int | None
    quality_images: int  # generated and real test images per Frechet distance
    quality_model: str  # the models.<name> whose penultimate features the Frechet distance is measured in

    def validate(self, key: str) -> None:
        require_fraction(key, beta_1=self.beta_1)
        require_at_most(key, MAX_MINUTES, max_train_minutes=self.max_train_minutes)
        require_at_most(key, 100_000, epochs=self.epochs)
        require_positive(
            key,
            max_train_minutes=self.max_train_minutes,
            quality_images=self.quality_images,
            max_images=self.max_images,
            noise_dim=self.noise_dim,
            dense_filters=self.dense_filters,
            kernel_size=self.kernel_size,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            batch_size=self.batch_size,
            sample_every=self.sample_every,
            sample_grid=self.sample_grid,
        )
        require_fraction(key, dropout=self.dropout)
        if len(self.g_filters) != 2:
            raise ParamsError(f"{key}.g_filters: the generator upsamples 8->16->32 and needs exactly 2 widths")


@dataclasses.dataclass(frozen=True)
class GenerateParams:
    n_train: int
    n_test: int
    batch_size: int
    jpeg_quality: int
    jpeg_subsampling: Literal["4:4:4", "4:2:2", "4:2:0"]

    def validate(self, key: str) -> None:
        require_positive(key, n_train=self.n_train, n_test=self.n_test, batch_size=self.batch_size)
        if not 1 <= self.jpeg_quality <= 95:
            raise ParamsError(f"{key}.jpeg_quality: must be in 1..95 (Pillow's range), got {self.jpeg_quality}")


@dataclasses.dataclass(frozen=True)
class ThreeClassParams:
    models: tuple[str, ...]  # the models.<name> sections trained with three classes (stage train_3class@<name>)
    val_fraction: float
    cifake_per_class: int | None  # real / SD images per class drawn from the whole archive; None = the prepared train

    def validate(self, key: str) -> None:
        if not self.models or len(set(self.models)) != len(self.models):
            raise ParamsError(
                f"{key}.models: list one or more distinct models.<name> sections, got {list(self.models)}"
            )
        require_fraction(key, val_fraction=self.val_fraction)
        require_positive(key, cifake_per_class=self.cifake_per_class)
        if self.val_fraction == 0:
            raise ParamsError(f"{key}.val_fraction: must be > 0 (model selection needs a validation split)")


@dataclasses.dataclass(frozen=True)
class RobustnessParams:
    max_images: int | None  # CIFAKE test images scored (seeded, half real / half fake); None = all
    perturbations: tuple[str, ...]  # "kind strength [+ kind strength ...]", parsed by `parsed()`

    def validate(self, key: str) -> None:
        require_positive(key, max_images=self.max_images)
        if not self.perturbations:
            raise ParamsError(f"{key}.perturbations: list at least one perturbation")
        names = [p.name for p in self.parsed(key)]
        if len(set(names)) != len(names):
            raise ParamsError(f"{key}.perturbations: lists a perturbation twice: {names}")

    def parsed(self, key: str = "robustness") -> tuple[Perturbation, ...]:
        out = []
        for i, text in enumerate(self.perturbations):
            try:
                out.append(Perturbation.parse(text))
            except ValueError as exc:
                raise ParamsError(f"{key}.perturbations[{i}]: {exc}") from None
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class DetectorParams:
    """What the train stage fits after training a binary model, on its train and validation splits only."""

    calibration: Literal["temperature", "none"]
    operating_fprs: tuple[float, ...]  # false-positive rates on validation reals to store thresholds for
    ood_percentile: float  # validation images above this percentile of the OOD score are called out of distribution
    ood_max_images: int  # train images the OOD statistics are fitted on (a seeded sample)
    calibration_bins: int  # equal-width bins of the expected calibration error reported at fitting
    batch_size: int  # images per inference batch while fitting

    def validate(self, key: str) -> None:
        require_positive(key, calibration_bins=self.calibration_bins, batch_size=self.batch_size)
        for rate in self.operating_fprs:
            if not 0 < rate < 1:
                raise ParamsError(f"{key}.operating_fprs: each rate must be in (0, 1), got {rate}")
        if not 50 <= self.ood_percentile < 100:
            raise ParamsError(f"{key}.ood_percentile: must be in [50, 100), got {self.ood_percentile}")
        require_positive(key, ood_max_images=self.ood_max_images)


@dataclasses.dataclass(frozen=True)
class ExplainParams:
    candidates: int
    per_cell: int
    min_feature_size: int
    batch_size: int

    def validate(self, key: str) -> None:
        require_positive(
            key,
            candidates=self.candidates,
            per_cell=self.per_cell,
            min_feature_size=self.min_feature_size,
            batch_size=self.batch_size,
        )


@dataclasses.dataclass(frozen=True)
class Params:
    base: BaseParams
    data: DataParams
    prepare: PrepareParams
    train: TrainParams
    detector: DetectorParams
    evaluate: EvaluateParams
    dcgan: DcganParams
    generate: GenerateParams
    train_3class: ThreeClassParams
    robustness: RobustnessParams
    explain: ExplainParams
    models: dict  # name -> ModelParams (typed by architecture)
    raw: dict  # the whole file as read, for MLflow


SECTIONS = {
    "base": BaseParams,
    "data": DataParams,
    "prepare": PrepareParams,
    "train": TrainParams,
    "detector": DetectorParams,
    "evaluate": EvaluateParams,
    "dcgan": DcganParams,
    "generate": GenerateParams,
    "train_3class": ThreeClassParams,
    "robustness": RobustnessParams,
    "explain": ExplainParams,
}


def load_params(path: Path, sections: typing.Iterable[str] | None = None) -> Params:
    """Read and validate params.yaml. `sections` limits validation to what a stage uses (None = all).

    "models" validates every models.<name> section; "models.<name>" just that one.
    """
    try:
        # YAML 1.2, as DVC reads and writes it: `dvc exp run -S` rewrites params.yaml and drops the quotes of
        # strings such as "4:2:0", which a YAML 1.1 reader (PyYAML) would take for the base-60 integer 14520.
        raw = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    unknown = sorted(set(raw) - set(SECTIONS) - {"models"})
    if unknown:  # e.g. `-S +trian.epochs=3`: a typo would otherwise be ignored silently
        raise ParamsError(
            f"{path}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join([*SECTIONS, 'models'])}"
        )
    wanted = set(SECTIONS) | {"models"} if sections is None else set(sections)
    loaded: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        loaded[name] = None
        if name in wanted:
            if name not in raw:
                raise ParamsError(f"{path}: missing section {name!r}")
            loaded[name] = load_section(cls, raw[name], name)
    loaded["models"] = _load_models(raw, wanted, path)
    return Params(**loaded, raw=raw)


def _load_models(raw: dict, wanted: set[str], path: Path) -> dict[str, ModelParams]:
    names = [w.split(".", 1)[1] for w in wanted if w.startswith("models.")]
    if "models" in wanted:
        names = list(raw.get("models") or {})
    models = raw.get("models") or {}
    out = {}
    for name in names:
        if name not in models:
            known = ", ".join(models) or "none"
            raise ParamsError(f"{path}: no section models.{name}; defined models: {known}")
        out[name] = load_model_params(models[name], f"models.{name}")
    return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their string form (MLflow params are strings)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if dataclasses.is_dataclass(tree):
        return flatten(dataclasses.asdict(tree), prefix)
    return {prefix.rstrip("."): tree}
