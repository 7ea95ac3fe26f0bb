"""Sampling, splitting, de-duplication and augmentation of decoded arrays."""

import typing

import numpy as np
import pytest

from realfake.data.cifake import RawDataset, pixel_digests
from realfake.data.prepare import AUGMENTATIONS, augment, load_split, prepare_splits
from realfake.errors import DataError, ParamsError
from realfake.params import Augmentation


def make_raw(n_train=40, n_test=10, dup_pairs=5, test_leaks=2, seed=0) -> RawDataset:
    rng = np.random.default_rng(seed)
    parts = []
    for split, n in ((0, n_train), (1, n_test)):
        for label in (0, 1):
            imgs = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            parts.append((imgs, np.full(n, split, np.uint8), np.full(n, label, np.uint8)))
    images = np.concatenate([p[0] for p in parts])
    split = np.concatenate([p[1] for p in parts])
    label = np.concatenate([p[2] for p in parts])
    train_fake = np.flatnonzero((split == 0) & (label == 1))
    images[train_fake[1 : 2 * dup_pairs : 2]] = images[train_fake[0 : 2 * dup_pairs : 2]]  # twin pairs
    test_real = np.flatnonzero((split == 1) & (label == 0))
    train_real = np.flatnonzero((split == 0) & (label == 0))
    images[train_real[:test_leaks]] = images[test_real[:test_leaks]]  # train copies of test images
    names = np.array([f"img{i}" for i in range(len(images))])
    return RawDataset(images, split, label, names, pixel_digests(images))


def run(raw, **overrides):
    kwargs = dict(per_class=30, val_fraction=0.2, augmentations=(), drop_test_overlap=True, seed=1) | overrides
    return prepare_splits(raw, **kwargs)


def digests_of(split):
    return set(pixel_digests(split.images))


def test_duplicates_never_cross_train_and_validation():
    for seed in range(5):
        splits, report = run(make_raw(dup_pairs=15), per_class=25, seed=seed)
        assert not digests_of(splits["train"]) & digests_of(splits["val"])
    assert report["train_pool"]["FAKE"]["duplicate_copies_removed"] == 15


def test_test_split_is_untouched_and_does_not_leak_into_train():
    raw = make_raw()
    splits, report = run(raw, per_class=35)
    np.testing.assert_array_equal(splits["test"].images, raw.images[raw.split == 1])
    assert not (digests_of(splits["train"]) | digests_of(splits["val"])) & digests_of(splits["test"])
    assert report["train_pool"]["REAL"]["test_overlap_removed"] == 2


def test_counts_stratified_and_seeded():
    splits, report = run(make_raw(), per_class=30, val_fraction=0.2)
    assert splits["val"].counts() == {"real": 6, "fake": 6}
    assert splits["train"].counts() == {"real": 24, "fake": 24}
    again, _ = run(make_raw(), per_class=30, val_fraction=0.2)
    np.testing.assert_array_equal(splits["train"].images, again["train"].images)
    other, _ = run(make_raw(), per_class=30, val_fraction=0.2, seed=2)
    assert not np.array_equal(splits["train"].images, other["train"].images)


def test_per_class_too_large_names_param_and_available_counts():
    with pytest.raises(ParamsError, match=r"prepare.per_class: 40 .*REAL: 38, FAKE: 35.*at most 35"):
        run(make_raw(), per_class=40)


def test_augment_adds_one_transformed_copy_each():
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1], np.uint8)
    out, out_labels = augment(images, labels, ["rot90", "hflip"])
    assert out.shape == (12, 32, 32, 3) and list(out_labels) == [0, 1, 0, 1] * 3
    np.testing.assert_array_equal(out[:4], images)
    np.testing.assert_array_equal(out[4:8], np.rot90(images, 1, axes=(1, 2)))
    np.testing.assert_array_equal(out[8:], images[:, :, ::-1])
    assert out[5, 0, 0].tolist() == images[1, 0, 31].tolist()  # rot90 (counter-clockwise): top-left <- top-right


def test_augmented_train_shuffled_with_labels_kept():
    raw = make_raw()
    splits, _ = run(raw, per_class=30, augmentations=("hflip",))
    train = splits["train"]
    assert len(train.labels) == 2 * 24 * 2
    by_digest = {d: raw.label[i] for i, d in enumerate(raw.digests)}
    flipped = pixel_digests(train.images[:, :, ::-1])
    for d, f, label in zip(pixel_digests(train.images), flipped, train.labels, strict=True):
        assert by_digest.get(d, by_digest.get(f)) == label  # each image or its mirror is a source of that label


def test_every_allowed_augmentation_has_its_copy():
    """params.Augmentation is the one list of names (params.yaml's check); each has its stored copy here."""
    assert set(typing.get_args(Augmentation)) == set(AUGMENTATIONS)
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    copies, labels = augment(images, np.array([0, 1]), typing.get_args(Augmentation))
    assert len(copies) == 6 and labels.tolist() == [0, 1] * 3 and not (copies[2:4] == images).all()


def write_split(path, images, labels, class_names=("real", "fake")) -> None:
    np.savez(path, images=images, labels=labels, class_names=np.array(class_names))


def test_load_split_reads_a_prepared_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    write_split(tmp_path / "val.npz", images, np.array([0, 1] * 3, np.uint8))
    split = load_split(tmp_path / "val.npz", image_size=32)
    np.testing.assert_array_equal(split.images, images)
    assert split.class_names == ("real", "fake") and split.counts() == {"real": 3, "fake": 3}


GOOD = {"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.array([0, 1], np.uint8),
        "class_names": np.array(["real", "fake"])}  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"prepared split not found; make it with `dvc repro prepare`"),
        (b"not an npz", r"not a readable prepared split .*dvc repro prepare"),
        (b"PK\x03\x04 cut off", r"not a readable prepared split .*dvc repro prepare"),
        ({"images": GOOD["images"]}, r"not a readable prepared split \(KeyError"),
        (GOOD | {"images": np.zeros((2, 28, 28, 3), np.uint8)}, r"images are uint8 \(2, 28, 28, 3\), expected uint8"),
        (GOOD | {"images": np.zeros((2, 32, 32, 3), np.float32)}, r"images are float32 .*expected uint8"),
        (GOOD | {"labels": np.array([0, 1, 1], np.uint8)}, "2 images but 3 labels"),
        (GOOD | {"labels": np.array([0, 2], np.uint8)}, r"label 2 outside class_names \['real', 'fake'\]"),
    ],
)
def test_load_split_names_the_file_and_the_remedy(tmp_path, content, message):
    path = tmp_path / "train.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    with pytest.raises(DataError, match=message) as info:
        load_split(path, image_size=32)
    assert str(path) in str(info.value)
