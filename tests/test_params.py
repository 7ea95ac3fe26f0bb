"""params.yaml validation: each mistake is named by its dotted key with the allowed values."""

import copy
from pathlib import Path

import pytest
import yaml

from realfake.errors import ParamsError
from realfake.params import flatten, load_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write(tmp_path, mutate) -> Path:
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_are_valid():
    params = load_params(REPO_PARAMS)
    assert params.prepare.augment == ("rot90", "hflip") and params.data.source == "kaggle"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["prepare"].update(per_clas=3), r"prepare: unknown key\(s\) per_clas; allowed keys: .*per_class"),
        (lambda p: p["data"].update(source="ftp"), r"data.source: 'ftp' is not allowed; use one of kaggle, archive"),
        (lambda p: p["prepare"].update(augment=["blur"]), r"prepare.augment: unknown augmentation 'blur'.*rot90"),
        (lambda p: p["prepare"].update(per_class=0), r"prepare.per_class: must be greater than 0"),
        (lambda p: p["prepare"].update(per_class=-5), r"prepare.per_class: must be greater than 0"),
        (lambda p: p["prepare"].update(per_class="many"), r"prepare.per_class: expected int, got 'many'"),
        (lambda p: p["prepare"].update(val_fraction=1.5), r"prepare.val_fraction: must be in \[0, 1\)"),
        (lambda p: p["data"].update(source="archive"), r"data.archive: required when data.source is 'archive'"),
        (lambda p: p["data"].update(archive_sha256="abc"), r"data.archive_sha256: expected 64 hex digits"),
        (lambda p: p["base"].pop("seed"), r"base: missing key\(s\) base.seed"),
        (lambda p: p.pop("prepare"), r"missing section 'prepare'"),
        (lambda p: p["models"]["fast"].update(schedule="step"), r"models.fast.schedule: 'step' is not allowed"),
        (
            lambda p: p["models"]["fast"].update(warmup_epochs=p["models"]["fast"]["epochs"]),
            r"models.fast.warmup_epochs: must be in \[0, epochs",
        ),
        (lambda p: p["models"]["cnn"].update(weight_decay=-1), r"models.cnn.weight_decay: must be >= 0"),
        (lambda p: p["models"]["fast"].update(label_smoothing=1), r"models.fast.label_smoothing: must be in \[0, 1\)"),
        (lambda p: p["models"]["fast"].update(stage_filters=[]), r"models.fast.stage_filters: list at least one"),
        (lambda p: p["models"]["fast"].update(space_to_depth=0), r"models.fast.space_to_depth: must be greater than 0"),
        (
            lambda p: p["models"]["resnet50"].update(jit_compile="yes"),
            r"models.resnet50.jit_compile: 'yes' is not allowed; use one of auto",
        ),
        (
            lambda p: p["models"]["fast"].update(jit_compile=1),
            r"models.fast.jit_compile: 1 is not allowed; use auto, true or false",
        ),
        (lambda p: p["train"].update(jit_compile=True), r"train: unknown key\(s\) jit_compile"),
        (lambda p: p["models"]["fast"].update(max_shift=-1), r"models.fast.max_shift: must be >= 0 pixels, got -1"),
        (
            lambda p: p["models"]["fast"].update(tta_max_shift=-1),
            r"models.fast.tta_max_shift: must be >= 0 pixels \(0 = no shifted views\), got -1",
        ),
    ],
)
def test_bad_values_are_named(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, mutate))


def test_only_requested_sections_are_validated(tmp_path):
    path = write(tmp_path, lambda p: p["prepare"].update(per_class=0))
    assert load_params(path, sections=["base", "data"]).data.source == "kaggle"


def test_params_rewritten_by_dvc_exp_run_keep_their_strings(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with DVC's own YAML writer, which drops the quotes of "4:2:0"."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text(REPO_PARAMS.read_text())
    with modify_yaml(path) as raw:
        raw["prepare"]["per_class"] = 7
    assert '"4:2:0"' not in path.read_text()  # what made the real run's `generate` fail
    params = load_params(path)
    assert params.generate.jpeg_subsampling == "4:2:0" and params.prepare.per_class == 7


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("base: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_flatten():
    tree = {"a": {"b": 1, "c": [1, 2]}, "d": None}
    assert flatten(copy.deepcopy(tree)) == {"a.b": 1, "a.c": [1, 2], "d": None}
