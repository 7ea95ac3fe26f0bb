"""params.yaml validation: each mistake is named by its dotted key with the allowed values."""

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from stage_helpers import REPO, tiny_params

from realfake.errors import ParamsError
from realfake.params import load_params
from realfake.pipeline.tracking import flatten


def write(tmp_path, mutate) -> Path:
    raw = tiny_params()  # whatever experiment the workspace's params.yaml holds, these values are the tests' own
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_committed_params_are_valid(tmp_path):
    """The committed params.yaml (not the workspace's, which an applied experiment may have rewritten) loads."""
    try:
        text = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    except (subprocess.CalledProcessError, FileNotFoundError):
        text = (REPO / "params.yaml").read_text()  # not a git checkout: the file itself
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert set(params.models) >= {"cnn", "efficientnet", "resnet50", "fast", "fast_robust", "efficientnet_3class"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["prepare"].update(per_clas=3), r"prepare: unknown key\(s\) per_clas; allowed keys: .*per_class"),
        (lambda p: p["data"].update(source="ftp"), r"data.source: 'ftp' is not allowed; use one of auto, kaggle, arch"),
        (lambda p: p.update(trian={"epochs": 3}), r"unknown section\(s\) trian; allowed: base, data"),
        (
            lambda p: p["prepare"].update(per_class="most"),
            r"per_class: 'most' is not allowed; use one of all or a count",
        ),
        (
            lambda p: p["models"]["fast"].update(degrade=[{"kind": "jpeg", "probability": 2, "range": [30, 90]}]),
            r"models.fast.degrade\[0\]: probability must be in \[0, 1\], got 2",
        ),
        (
            lambda p: p["models"]["fast"].update(degrade=[{"kind": "jpeg", "probability": 0.5, "range": [30, 99]}]),
            r"models.fast.degrade\[0\]: jpeg 99: JPEG quality must be a whole number in 1..95",
        ),
        (
            lambda p: p["models"]["fast"].update(degrade=[{"kind": "rain", "probability": 0.5, "range": [1, 2]}]),
            r"models.fast.degrade\[0\].kind: 'rain' is not allowed",
        ),
        (lambda p: p["models"]["fast"].update(max_train_minutes=0), r"models.fast.max_train_minutes: must be greater"),
        (lambda p: p["robustness"].update(perturbations=["blur"]), r"robustness.perturbations\[0\]: 'blur': write"),
        (lambda p: p["robustness"].update(perturbations=["jpeg 50 + rain 2"]), r"perturbations\[0\]: unknown kind"),
        (lambda p: p["robustness"].update(perturbations=["jpeg 50", "jpeg 50"]), r"lists a perturbation twice"),
        (
            lambda p: p["detector"].update(operating_fprs=[0]),
            r"operating_fprs\[0\]: must be in \(0, 1\), got 0",
        ),
        (
            lambda p: p["prepare"].update(augment=["blur"]),
            r"augment\[0\]: 'blur' is not allowed; use one of rot90, hflip",
        ),
        (
            lambda p: p["prepare"].update(per_class=0),
            r"per_class: -?[05] is not allowed; use one of all or a count in 1..1,000,000,000",
        ),
        (
            lambda p: p["prepare"].update(per_class=-5),
            r"per_class: -?[05] is not allowed; use one of all or a count in 1..1,000,000,000",
        ),
        (lambda p: p["prepare"].update(val_fraction=1.5), r"prepare.val_fraction: must be in \(0, 1\), got 1.5"),
        (
            lambda p: p["data"].update(source="archive", archive=None),
            r"data.archive: required when data.source is 'archive'",
        ),
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
        (
            lambda p: p["models"]["fast"].update(stage_filters=[]),
            r"fast.stage_filters: list at least 1 entry, got \[\]",
        ),
        (lambda p: p["models"]["fast"].update(space_to_depth=0), r"models.fast.space_to_depth: must be greater than 0"),
        (
            lambda p: p["models"]["resnet50"].update(jit_compile="yes"),
            r"models.resnet50.jit_compile: 'yes' is not allowed; use one of auto",
        ),
        (
            lambda p: p["models"]["fast"].update(jit_compile=1),
            r"models.fast.jit_compile: 1 is not allowed; use one of auto, true, false",
        ),
        (lambda p: p["train"].update(jit_compile=True), r"train: unknown key\(s\) jit_compile"),
        (lambda p: p["models"]["fast"].update(max_shift=-1), r"models.fast.max_shift: must be >= 0, got -1"),
        (
            lambda p: p["models"]["fast"].update(tta_max_shift=-1),
            r"models.fast.tta_max_shift: must be >= 0, got -1",
        ),
        # non-finite and absurd numbers: refused before any work, not a nan loss or a TensorFlow traceback later
        (
            lambda p: p["models"]["fast"].update(learning_rate=float("nan")),
            r"models.fast.learning_rate: must be a finite",
        ),
        (lambda p: p["detector"].update(ood_percentile=float("inf")), r"detector.ood_percentile: must be a finite"),
        (
            lambda p: p["models"]["fast"].update(epochs=10**30),
            r"models.fast.epochs: must be at most 100000, got 10{30}",
        ),
        (lambda p: p["models"]["cnn"].update(epochs=200_000), r"models.cnn.epochs: must be at most 100000"),
        (lambda p: p["models"]["fast"].update(learning_rate=5.0), r"models.fast.learning_rate: must be at most 1"),
        (lambda p: p["dcgan"].update(max_train_minutes=1e9), r"dcgan.max_train_minutes: must be at most 10080"),
        (lambda p: p["models"]["fast"].update(validate_every_steps=0), r"models.fast.validate_every_steps: must be"),
        (lambda p: p["dcgan"].update(beta_1=1.0), r"dcgan.beta_1: must be in \[0, 1\)"),
        (lambda p: p["dcgan"].update(precision="fp8"), r"dcgan.precision: 'fp8' is not allowed"),
        (lambda p: p["train_3class"].update(models=[]), r"train_3class.models: list at least 1 entry"),
        (lambda p: p["models"]["resnet50"].update(batchnorm_momentum=1.0), r"batchnorm_momentum: must be in \[0, 1\)"),
    ],
)
def test_bad_values_are_named(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, mutate))


def test_only_requested_sections_are_validated(tmp_path):
    path = write(tmp_path, lambda p: p["prepare"].update(per_class=0))
    assert load_params(path, sections=["base", "data"]).data.source == "archive"


def test_per_class_all_and_perturbation_chains(tmp_path):
    path = write(tmp_path, lambda p: p["prepare"].update(per_class="all"))
    params = load_params(path)
    assert params.prepare.per_class == "all"
    chain = params.robustness.parsed()[-1]
    assert chain.name == "downscale_2+jpeg_75" and [s.kind for s in chain.steps] == ["downscale", "jpeg"]


def test_params_rewritten_by_dvc_exp_run_keep_their_strings(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with DVC's own YAML writer, which drops the quotes of "4:2:0"."""
    from dvc.utils.serialize import modify_yaml

    path = write(tmp_path, lambda p: None)
    path.write_text(path.read_text().replace("'4:2:0'", '"4:2:0"'))
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
    (tmp_path / "latin1.yaml").write_bytes("base: {seed: 42}  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ParamsError, match=r"latin1.yaml: not UTF-8 text \(byte 23\); save it as UTF-8"):
        load_params(tmp_path / "latin1.yaml")


def test_flatten():
    tree = {"a": {"b": 1, "c": [1, 2]}, "d": None}
    assert flatten(copy.deepcopy(tree)) == {"a.b": 1, "a.c": [1, 2], "d": None}
