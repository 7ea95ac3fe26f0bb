"""The 3-class retrain's own draw of real and Stable Diffusion images from the whole archive."""

import numpy as np
import pytest
from test_prepare import make_raw

from realfake.data.cifake import pixel_digests
from realfake.data.prepare import Split, prepare_splits
from realfake.data.threeclass import archive_sample, three_class_splits
from realfake.errors import ParamsError


def prepared(raw):
    splits, _ = prepare_splits(raw, per_class=20, val_fraction=0.25, augmentations=(), drop_test_overlap=True, seed=3)
    return splits


def test_archive_sample_keeps_validation_and_test_unseen():
    raw = make_raw(n_train=40, dup_pairs=5, test_leaks=2)
    val = prepared(raw)["val"]
    train, report = archive_sample(raw, per_class=28, val=val, drop_test_overlap=True, seed=1)
    assert train.counts() == {"real": 28, "fake": 28} and train.class_names == ("real", "fake")
    drawn = set(pixel_digests(train.images))
    assert len(drawn) == 56  # distinct: no twin drawn twice
    assert not drawn & set(pixel_digests(val.images))
    assert not drawn & set(raw.digests[raw.split == 1])
    # REAL: 40 minus 2 test copies minus 5 validation images; FAKE: 40 minus 5 twins minus 5 validation images
    assert report == {"REAL": {"available": 33, "drawn": 28}, "FAKE": {"available": 30, "drawn": 28}}
    for label in (0, 1):  # every label still names its class
        want = set(raw.digests[(raw.split == 0) & (raw.label == label)])
        assert set(pixel_digests(train.images[train.labels == label])) <= want


def test_archive_sample_is_seeded_and_refuses_more_than_the_archive_holds():
    raw = make_raw(n_train=40)
    val = prepared(raw)["val"]
    first, _ = archive_sample(raw, per_class=10, val=val, drop_test_overlap=True, seed=5)
    again, _ = archive_sample(raw, per_class=10, val=val, drop_test_overlap=True, seed=5)
    other, _ = archive_sample(raw, per_class=10, val=val, drop_test_overlap=True, seed=6)
    assert np.array_equal(first.images, again.images) and not np.array_equal(first.images, other.images)
    with pytest.raises(ParamsError, match=r"train_3class.cifake_per_class: 31 is more than .* at most 30"):
        archive_sample(raw, per_class=31, val=val, drop_test_overlap=True, seed=5)


def test_archive_sample_without_copies_gives_every_class_the_same_augmentation():
    raw = make_raw(n_train=40)
    val = prepared(raw)["val"]
    train, _ = archive_sample(raw, per_class=10, val=val, drop_test_overlap=True, seed=5)
    dcgan = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    train3, val3 = three_class_splits(train, val, dcgan, val_fraction=0.2, augmentations=(), seed=5)
    assert train3.counts() == {"real": 10, "sd_fake": 10, "dcgan_fake": 8}
    assert val3.counts() == {"real": 5, "sd_fake": 5, "dcgan_fake": 2}
    assert isinstance(train3, Split)
