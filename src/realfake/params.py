"""Load params.yaml once into typed, validated, frozen pydantic models.

Every error is one line naming the offending key (dotted, as `dvc exp run -S` spells it) and the allowed values,
raised before any stage does work. Each set of allowed values has its one home here, as a Literal; params.yaml
says what each key means.
"""

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, Strict
from ruamel.yaml import YAML, YAMLError

from realfake.data.perturb import Degradation, Perturbation
from realfake.errors import ParamsError
from realfake.validation import (
    MAX_INT,
    Bool,
    Distinct,
    Float,
    Fraction,
    Int,
    Pixels,
    Positive,
    Share,
    Str,
    Widths,
    check,
    validated,
)

Augmentation = Literal["rot90", "hflip"]  # pixel-exact image symmetries (data.prepare and data.transforms)
Strategy = Literal["auto", "default", "mirrored", "data_parallel"]
Optimizer = Literal["adam", "adamax", "adamw", "sgd"]
Schedule = Literal["constant", "warmup_cosine"]
Precision = Literal["auto", "float32", "mixed_bfloat16"]  # auto = mixed_bfloat16 on CPUs with AMX or AVX512-BF16
MAX_MINUTES = 7 * 24 * 60.0  # a training budget over a week is a typo
Epochs = Annotated[int, Strict(), Field(gt=0, le=100_000)]
Minutes = Annotated[Float, Field(gt=0, le=MAX_MINUTES)]
Rate = Annotated[Float, Field(gt=0, le=1)]
CountOrAll = Annotated[int | Literal["all"], check(lambda v: v == "all" or type(v) is int and 0 < v <= MAX_INT,
    f"{{value!r}} is not allowed; use one of all or a count in 1..{MAX_INT:,}", pydantic.PlainValidator)]  # fmt: skip
Perturbations = Annotated[Str, pydantic.AfterValidator(lambda text: Perturbation.parse(text) and text)]
Sha256 = Annotated[Str, check(lambda v: len(v) == 64 and set(v.lower()) <= set("0123456789abcdef"),
                               "expected 64 hex digits or null, got {value!r}")]  # fmt: skip


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaseParams(Section):
    seed: Annotated[Int, Field(ge=0)]
    image_size: Positive
    mlflow_experiment: Str
    registered_model_prefix: Str


class DataParams(Section):
    source: Literal["auto", "kaggle", "archive"]
    kaggle_dataset: Str
    archive: Str | None
    archive_sha256: Sha256 | None

    @pydantic.model_validator(mode="after")
    def _archive_named(self):
        if self.source != "kaggle" and not self.archive:
            raise ValueError(f"archive: required when data.source is {self.source!r}; set it to the zip's path or "
                             "URL, e.g. dvc exp run -S data.archive=data/cifake.zip")  # fmt: skip
        return self


class PrepareParams(Section):
    per_class: CountOrAll
    val_fraction: Share  # > 0: model selection needs a validation split
    augment: Annotated[tuple[Augmentation, ...], Distinct]
    drop_test_overlap: Bool


class TrainParams(Section):
    strategy: Strategy
    monitor: Annotated[Str, Field(pattern="^val_")]
    monitor_mode: Literal["max", "min"]
    early_stopping_patience: Positive | None
    run_eagerly: Bool


class _Fit(Section):
    epochs: Epochs
    batch_size: Positive
    optimizer: Optimizer
    learning_rate: Rate
    schedule: Schedule
    warmup_epochs: Annotated[Float, Field(ge=0)]
    weight_decay: Annotated[Float, Field(ge=0)]
    label_smoothing: Fraction
    augment: Annotated[tuple[Augmentation, ...], Distinct]
    max_shift: Pixels
    jit_compile: Annotated[Literal["auto", True, False], check(lambda v: type(v) not in (int, float),
        "{value!r} is not allowed; use one of auto, true, false", pydantic.BeforeValidator)]  # fmt: skip
    degrade: tuple[Annotated[Degradation, pydantic.AfterValidator(lambda d: d.check() or d)], ...]
    max_train_minutes: Minutes | None
    validate_every_steps: Positive | None
    test_curve: Bool

    @pydantic.model_validator(mode="after")
    def _warmup_within_training(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs: must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        return self


class CnnParams(_Fit):
    architecture: Literal["cnn"]
    conv_filters: Widths
    kernel_size: Positive
    pool_size: Positive
    dense_units: Positive


class EfficientNetParams(_Fit):
    architecture: Literal["efficientnet"]
    weights: Literal["imagenet"] | None
    dense_units: Positive
    kernel_l2: Annotated[Float, Field(ge=0)]
    activity_l1: Annotated[Float, Field(ge=0)]
    bias_l1: Annotated[Float, Field(ge=0)]
    dropout: Fraction


class ResNetParams(_Fit):
    architecture: Literal["resnet50"]
    weights: Literal["imagenet"] | None
    dense_units: Positive
    dropout: Fraction
    batchnorm_momentum: Fraction


class FastParams(_Fit):
    architecture: Literal["fast"]
    stage_filters: Widths
    convs_per_stage: Positive
    space_to_depth: Positive
    dropout: Fraction
    flip_tta: Bool
    tta_max_shift: Pixels
    max_parameters: Positive


ModelParams = CnnParams | EfficientNetParams | ResNetParams | FastParams
ARCHITECTURES = {typing.get_args(m.model_fields["architecture"].annotation)[0]: m for m in typing.get_args(ModelParams)}
_MODEL = pydantic.TypeAdapter(Annotated[ModelParams, Field(discriminator="architecture")])


class EvaluateParams(Section):
    batch_size: Positive
    threshold: Fraction
    n_bootstrap: Annotated[Positive, Field(le=1_000_000)]
    confidence: Fraction
    roc_max_points: Positive
    calibration_bins: Positive
    ood_photo_crops: Positive


class DcganParams(Section):
    noise_dim: Positive
    dense_filters: Positive
    g_filters: Annotated[tuple[Positive, ...], Field(min_length=2, max_length=2)]  # the generator upsamples twice
    d_filters: Widths
    kernel_size: Positive
    dropout: Fraction
    learning_rate: Rate
    beta_1: Fraction
    epochs: Epochs
    batch_size: Positive
    max_train_minutes: Minutes | None
    precision: Precision
    sample_every: Positive
    sample_grid: Positive
    max_images: Positive | None
    quality_images: Positive
    quality_model: Str


class GenerateParams(Section):
    n_train: Positive
    n_test: Positive
    batch_size: Positive
    jpeg_quality: Annotated[Int, Field(ge=1, le=95)]  # Pillow's range
    jpeg_subsampling: Literal["4:4:4", "4:2:2", "4:2:0"]


class ThreeClassParams(Section):
    models: Annotated[tuple[Str, ...], Field(min_length=1), Distinct]
    val_fraction: Share
    cifake_per_class: Positive | None


class RobustnessParams(Section):
    max_images: Positive | None
    perturbations: Annotated[tuple[Perturbations, ...], Field(min_length=1), check(
        lambda texts: len({Perturbation.parse(t).name for t in texts}) == len(texts),
        "lists a perturbation twice: {value}")]  # fmt: skip

    def parsed(self) -> tuple[Perturbation, ...]:
        return tuple(Perturbation.parse(text) for text in self.perturbations)


class DetectorParams(Section):
    calibration: Literal["temperature", "none"]
    operating_fprs: tuple[Share, ...]
    ood_percentile: Annotated[Float, check(lambda v: 50 <= v < 100, "must be in [50, 100), got {value!r}")]
    ood_max_images: Positive
    calibration_bins: Positive
    batch_size: Positive


class ExplainParams(Section):
    candidates: Positive
    per_cell: Positive
    min_feature_size: Positive
    batch_size: Positive


class Params(BaseModel):
    """The sections a stage asked for (the others are None), the models by name, and the file as read."""

    model_config = ConfigDict(frozen=True)
    base: BaseParams | None
    data: DataParams | None
    prepare: PrepareParams | None
    train: TrainParams | None
    detector: DetectorParams | None
    evaluate: EvaluateParams | None
    dcgan: DcganParams | None
    generate: GenerateParams | None
    train_3class: ThreeClassParams | None
    robustness: RobustnessParams | None
    explain: ExplainParams | None
    models: dict[str, ModelParams]
    raw: dict  # the whole file as read, for MLflow


SECTIONS = {
    name: typing.get_args(f.annotation)[0] for name, f in Params.model_fields.items() if name not in ("models", "raw")
}


def load_section(cls: type[Section], raw: Any, key: str) -> Section:
    """Build section `cls` from a mapping; any mistake is a ParamsError naming the dotted key."""
    return validated(cls.model_validate, raw, key, cls)


def load_model_params(raw: Any, key: str) -> ModelParams:
    """A models.<name> section, typed by its `architecture` (the union's discriminator)."""
    arch = raw.get("architecture") if isinstance(raw, dict) else None
    if arch not in ARCHITECTURES:
        raise ParamsError(f"{key}.architecture: {arch!r} is not allowed; use one of {', '.join(ARCHITECTURES)}")
    return validated(_MODEL.validate_python, raw, key, ARCHITECTURES[arch], tagged=True)


def read_yaml(path: Path) -> dict:
    """params.yaml as YAML 1.2, as DVC reads and writes it (`dvc exp run -S` drops the quotes of strings such as
    "4:2:0", which a YAML 1.1 reader would take for the base-60 integer 14520); only known sections."""
    try:
        raw = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    unknown = sorted(set(raw) - {*SECTIONS, "models"})
    if unknown:  # e.g. `-S +trian.epochs=3`: a typo would otherwise be ignored silently
        raise ParamsError(f"{path}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}, models")
    return raw


def load_params(path: Path, sections: typing.Iterable[str] | None = None) -> Params:
    """Read and validate params.yaml. `sections` limits validation to what a stage uses (None = all).

    "models" validates every models.<name> section; "models.<name>" just that one.
    """
    raw = read_yaml(path)
    wanted = {*SECTIONS, "models"} if sections is None else set(sections)
    loaded: dict[str, Any] = dict.fromkeys(SECTIONS)
    for name in [s for s in SECTIONS if s in wanted]:
        if name not in raw:
            raise ParamsError(f"{path}: missing section {name!r}")
        loaded[name] = load_section(SECTIONS[name], raw[name], name)
    models = raw.get("models") or {}
    names = list(models) if "models" in wanted else [w.split(".", 1)[1] for w in wanted if w.startswith("models.")]
    for name in names:
        if name not in models:
            raise ParamsError(f"{path}: no section models.{name}; defined models: {', '.join(models) or 'none'}")
    return Params(**loaded, models={n: load_model_params(models[n], f"models.{n}") for n in names}, raw=raw)
