"""Evaluation: metrics vs hand-computed values, bootstrap and Wilson intervals, inference, table, heatmap."""

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from stage_helpers import checker_model

from realfake.evaluation import cross, reports, scoring
from realfake.evaluation import metrics as ev
from realfake.evaluation.plots import heatmap_png

BINARY = ["real", "fake"]
THREE = ["real", "sd_fake", "dcgan_fake"]

# Ten images, threshold 0.5 (fake when P(fake) >= 0.5):
#   reals (0): 0.1 0.2 0.3 0.6 0.4  -> 4 true negatives, 1 false positive (0.6)
#   fakes (1): 0.8 0.7 0.45 0.9 0.35 -> 3 true positives, 2 false negatives (0.45, 0.35)
Y10 = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], dtype=np.uint8)  # uint8, as prepare.py stores labels
P10 = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.8, 0.7, 0.45, 0.9, 0.35])


def report10(**overrides):
    kwargs = dict(threshold=0.5, class_names=BINARY, n_bootstrap=500, confidence=0.95, seed=0)
    return ev.binary_report(Y10, P10, **{**kwargs, **overrides})


def synthetic(n, seed):
    """n labelled scores with some overlap between the classes (AUC about 0.87, accuracy about 0.79)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.3 + 0.4 * y, 0.25), 0.0, 1.0)


# ---- binary report ------------------------------------------------------------------------------


def test_binary_report_matches_hand_computed_counts():
    r = report10()
    assert r["n"] == 10
    assert r["accuracy"] == pytest.approx(7 / 10)  # (TN 4 + TP 3) / 10
    assert r["confusion_matrix"] == [[4, 1], [2, 3]]  # rows actual real/fake, columns predicted real/fake
    fake, real = r["per_class"]["fake"], r["per_class"]["real"]
    assert fake["precision"] == pytest.approx(3 / 4)  # TP / (TP + FP)
    assert fake["recall"] == pytest.approx(3 / 5)  # TP / (TP + FN)
    assert fake["f1"] == pytest.approx(2 / 3)  # 2 * 0.75 * 0.6 / 1.35
    assert real["precision"] == pytest.approx(4 / 6)  # TN / (TN + FN)
    assert real["recall"] == pytest.approx(4 / 5)  # TN / (TN + FP)
    assert real["f1"] == pytest.approx(8 / 11)  # 2 * (2/3) * 0.8 / (2/3 + 0.8)
    assert fake["support"] == real["support"] == 5
    assert r["macro_avg"] == pytest.approx({"precision": 17 / 24, "recall": 0.7, "f1": 23 / 33})
    assert r["weighted_avg"] == pytest.approx(r["macro_avg"])  # equal supports


def test_roc_auc_by_counting_pairs():
    # Of 5 x 5 (fake, real) pairs, the fake scores higher in: 0.35 > 3 reals, 0.45 > 4, 0.7/0.8/0.9 > all 5.
    assert report10()["roc_auc"] == pytest.approx((3 + 4 + 5 + 5 + 5) / 25)  # 0.88


def test_roc_auc_counts_ties_as_half():
    # Pairs (fake, real): (0.5, 0.5) tie = 1/2, (0.5, 0.2) = 1, (0.8, 0.5) = 1, (0.8, 0.2) = 1 -> 3.5 / 4.
    r = ev.binary_report(
        np.array([0, 1, 0, 1]),
        np.array([0.5, 0.5, 0.2, 0.8]),
        threshold=0.5,
        class_names=BINARY,
        n_bootstrap=50,
        confidence=0.9,
        seed=0,
    )
    assert r["roc_auc"] == pytest.approx(0.875)


def test_threshold_is_inclusive():
    # P(fake) == threshold counts as fake: moving the threshold to 0.45 turns that fake into a true positive.
    assert report10(threshold=0.45)["confusion_matrix"] == [[4, 1], [1, 4]]


def test_binary_report_is_json_ready():
    r = report10()
    assert type(r["accuracy"]) is float and type(r["n"]) is int
    assert all(type(v) is float for v in r["accuracy_ci"] + r["roc_auc_ci"])


def test_roc_auc_null_when_one_class():
    r = ev.binary_report(
        np.zeros(5, int), P10[:5], threshold=0.5, class_names=BINARY, n_bootstrap=20, confidence=0.9, seed=0
    )
    assert r["roc_auc"] is None and r["roc_auc_ci"] is None
    assert r["accuracy"] == pytest.approx(4 / 5)


@pytest.mark.parametrize(
    "y, p, match",
    [
        (Y10[:9], P10, "one label per prediction"),
        (Y10 + 1, P10, "labels 0..1"),
        (Y10, np.where(P10 > 0.8, np.nan, P10), "NaN"),
    ],
)
def test_binary_report_rejects_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        ev.binary_report(y, p, threshold=0.5, class_names=BINARY, n_bootstrap=10, confidence=0.9, seed=0)


# ---- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_matches_naive_resampling():
    # Scores already sorted (with ties), so the report's resample indices refer to these very positions.
    y = np.array([0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.1, 0.3, 0.3, 0.3, 0.5, 0.55, 0.6, 0.7, 0.9, 0.9])
    r = ev.binary_report(y, p, threshold=0.5, class_names=BINARY, n_bootstrap=300, confidence=0.9, seed=7)
    idx = np.random.default_rng(7).integers(0, len(y), size=(300, len(y)))
    correct = (p >= 0.5).astype(int) == y
    accuracies = correct[idx].mean(axis=1)
    aucs = [roc_auc_score(y[i], p[i]) for i in idx if 0 < y[i].sum() < len(i)]
    assert r["accuracy_ci"] == pytest.approx(np.percentile(accuracies, [5, 95]).tolist())
    assert r["roc_auc_ci"] == pytest.approx(np.percentile(aucs, [5, 95]).tolist())


def test_weighted_auc_equals_sklearn_on_repeated_images():
    y, p = synthetic(300, seed=3)
    p = np.round(p, 1)  # many ties
    order = np.argsort(p, kind="stable")
    y, p = y[order], p[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    counts = next(ev._bootstrap_counts(len(y), n_bootstrap=4, seed=1))
    for row, auc in zip(counts, ev._auc_from_counts(counts, y == 1, starts), strict=True):
        keep = np.repeat(np.arange(len(y)), row)
        assert auc == pytest.approx(roc_auc_score(y[keep], p[keep]), abs=1e-12)


def test_bootstrap_interval_contains_estimate_and_shrinks_with_more_data():
    kwargs = dict(threshold=0.5, class_names=BINARY, n_bootstrap=400, confidence=0.95, seed=0)
    small = ev.binary_report(*synthetic(200, seed=1), **kwargs)
    large = ev.binary_report(*synthetic(5000, seed=1), **kwargs)
    for r in (small, large, report10()):
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
        assert r["roc_auc_ci"][0] <= r["roc_auc"] <= r["roc_auc_ci"][1]
    for key in ("accuracy_ci", "roc_auc_ci"):
        small_width = small[key][1] - small[key][0]
        large_width = large[key][1] - large[key][0]
        # Width falls like 1/sqrt(n): 25x the data should give about 1/5 the width.
        assert large_width < 0.35 * small_width


def test_bootstrap_is_deterministic_per_seed():
    assert report10(seed=3) == report10(seed=3)
    other = report10(seed=4)
    assert (other["accuracy_ci"], other["roc_auc_ci"]) != (
        report10(seed=3)["accuracy_ci"],
        report10(seed=3)["roc_auc_ci"],
    )


def test_higher_confidence_gives_wider_interval():
    narrow, wide = report10(confidence=0.5)["accuracy_ci"], report10(confidence=0.99)["accuracy_ci"]
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1] and wide[1] - wide[0] > narrow[1] - narrow[0]


# ---- text report, ROC and confusion rows ---------------------------------------------------------


def test_classification_report_text():
    text = ev.classification_report_text(Y10, ev.binary_predictions(P10, threshold=0.5), BINARY)
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert lines["real"] == ["0.6667", "0.8000", "0.7273", "5"]
    assert lines["fake"] == ["0.7500", "0.6000", "0.6667", "5"]
    assert lines["accuracy"] == ["0.7000", "10"]


def test_roc_points_full_curve():
    # Lowering the threshold through the sorted scores 0.9 F, 0.8 F, 0.7 F, 0.6 R, 0.45 F, 0.4 R, 0.35 F,
    # 0.3 R, 0.2 R, 0.1 R walks (fpr, tpr) up and right; sklearn drops points in the middle of straight runs
    # (0.8, 0.3, 0.2) but keeps its first threshold (0.9) and prepends (0, 0) for "nothing is fake".
    expected = [
        (0.0, 0.0, None),
        (0.0, 0.2, 0.9),
        (0.0, 0.6, 0.7),
        (0.2, 0.6, 0.6),
        (0.2, 0.8, 0.45),
        (0.4, 0.8, 0.4),
        (0.4, 1.0, 0.35),
        (1.0, 1.0, 0.1),
    ]
    points = ev.roc_points(Y10, P10, max_points=100)
    assert points[0]["threshold"] is None  # infinite in sklearn; JSON has no infinity
    np.testing.assert_allclose(
        [(pt["fpr"], pt["tpr"], pt["threshold"] or np.inf) for pt in points],
        [(f, t, np.inf if th is None else th) for f, t, th in expected],
    )
    fpr, tpr = [pt["fpr"] for pt in points], [pt["tpr"] for pt in points]
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.88)  # the area under these points is the AUC


def test_roc_points_thinned_keeps_both_ends():
    # Indices linspace(0, 7, 3) = 0, 3.5, 7 -> 0, 4, 7.
    points = ev.roc_points(Y10, P10, max_points=3)
    np.testing.assert_allclose([(pt["fpr"], pt["tpr"]) for pt in points], [(0, 0), (0.2, 0.8), (1, 1)])
    y, p = synthetic(2000, seed=2)
    thinned = ev.roc_points(y, p, max_points=50)
    assert len(thinned) <= 50
    assert (thinned[0]["fpr"], thinned[0]["tpr"], thinned[-1]["fpr"], thinned[-1]["tpr"]) == (0, 0, 1, 1)
    assert np.all(np.diff([pt["fpr"] for pt in thinned]) >= 0) and np.all(np.diff([pt["tpr"] for pt in thinned]) >= 0)


def test_roc_points_one_class_is_empty():
    assert ev.roc_points(np.ones(4, int), P10[:4], max_points=10) == []


def test_confusion_rows():
    rows = ev.confusion_rows(np.array([0, 1, 2]), np.array([0, 2, 2]), THREE)
    assert rows == [
        {"actual": "real", "predicted": "real"},
        {"actual": "sd_fake", "predicted": "dcgan_fake"},
        {"actual": "dcgan_fake", "predicted": "dcgan_fake"},
    ]


# ---- multi-class --------------------------------------------------------------------------------

# Six images, prediction = argmax: real ok, real -> sd_fake, sd ok, sd -> dcgan, dcgan ok, dcgan ok.
Y6 = np.array([0, 0, 1, 1, 2, 2])
PROBS6 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.3, 0.5],
        [0.1, 0.1, 0.8],
        [0.2, 0.2, 0.6],
    ]
)


def test_multiclass_report_matches_hand_computed_values():
    r = ev.multiclass_report(Y6, PROBS6, class_names=THREE, n_bootstrap=300, confidence=0.95, seed=0)
    assert r["n"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    pc = r["per_class"]
    # precision = diagonal / column sum, recall = diagonal / row sum
    assert [pc[c]["precision"] for c in THREE] == pytest.approx([1 / 1, 1 / 2, 2 / 3])
    assert [pc[c]["recall"] for c in THREE] == pytest.approx([1 / 2, 1 / 2, 2 / 2])
    assert [pc[c]["f1"] for c in THREE] == pytest.approx([2 / 3, 1 / 2, 4 / 5])
    assert r["macro_avg"] == pytest.approx({"precision": 13 / 18, "recall": 2 / 3, "f1": 59 / 90})
    # One vs rest: real's 0.7 and 0.3 beat all four others' 0.1 0.2 0.1 0.2 -> 1; sd_fake's 0.8 beats all,
    # 0.3 beats 3 of 4 (not 0.6) -> 7/8; dcgan's 0.8 and 0.6 beat 0.1 0.1 0.1 0.5 -> 1.
    assert [pc[c]["roc_auc_ovr"] for c in THREE] == pytest.approx([1.0, 7 / 8, 1.0])
    assert r["roc_auc_ovr_macro"] == pytest.approx((1 + 7 / 8 + 1) / 3)
    assert r["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(Y6, PROBS6, multi_class="ovr", average="macro"))
    assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]


def test_multiclass_auc_null_when_a_class_is_absent():
    r = ev.multiclass_report(Y6[:4], PROBS6[:4], class_names=THREE, n_bootstrap=20, confidence=0.9, seed=0)
    assert r["per_class"]["dcgan_fake"]["roc_auc_ovr"] is None and r["roc_auc_ovr_macro"] is None


# ---- probabilities and predict_proba ------------------------------------------------------------


def test_p_fake_and_predict_labels():
    assert scoring.p_fake(PROBS6) == pytest.approx([0.3, 0.7, 0.9, 0.8, 0.9, 0.8])  # 1 - P(real)
    two = np.array([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
    assert scoring.predict_labels(two, threshold=0.5).tolist() == [0, 1, 1]
    assert scoring.predict_labels(PROBS6, threshold=0.5).tolist() == [0, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="C >= 2"):
        scoring.p_fake(np.array([[0.5], [0.2]]))


class RecordingModel:
    """Stands in for a Keras model: records the batches it is given, returns P(fake) = mean pixel / 255."""

    name = "recorder"
    output_shape = (None, 1)

    def __init__(self):
        self.batches = []

    def predict_on_batch(self, batch):  # the traced path
        self.batches.append(("traced", batch.dtype, len(batch)))
        return batch.mean(axis=(1, 2, 3))[:, None] / 255.0

    def __call__(self, batch, training):  # the eager path
        assert training is False
        self.batches.append(("eager", batch.dtype, len(batch)))
        return batch.mean(axis=(1, 2, 3))[:, None] / 255.0


def test_predict_proba_casts_batch_by_batch():
    images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 51, 102, 153, 204)])
    model = RecordingModel()
    probs = scoring.predict_proba(model, images, batch_size=2)
    assert model.batches == [("traced", np.float32, 2), ("traced", np.float32, 2), ("traced", np.float32, 1)]
    assert probs == pytest.approx(np.array([[1.0, 0.0], [0.8, 0.2], [0.6, 0.4], [0.4, 0.6], [0.2, 0.8]]))
    assert scoring.predict_proba(model, images[:0], batch_size=2).shape == (0, 2)


def test_predict_proba_scores_a_single_batch_eagerly():
    """Tracing a predict graph costs seconds for the big models and pays off only over several batches."""
    images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 51, 102)])
    model = RecordingModel()
    probs = scoring.predict_proba(model, images, batch_size=3)
    assert model.batches == [("eager", np.float32, 3)]
    assert probs == pytest.approx(np.array([[1.0, 0.0], [0.8, 0.2], [0.6, 0.4]]))


def test_predict_proba_eager_and_traced_paths_agree_on_a_keras_model():
    model = checker_model()
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    eager = scoring.predict_proba(model, images, batch_size=6)
    traced = scoring.predict_proba(model, images, batch_size=4)
    assert eager == pytest.approx(traced, abs=1e-6)


def test_predict_proba_rejects_scaled_images():
    with pytest.raises(ValueError, match="uint8"):
        scoring.predict_proba(RecordingModel(), np.zeros((2, 32, 32, 3), np.float32), batch_size=2)


def tiny_model(units, activation, kernel, bias):
    """GlobalAveragePooling2D then Dense: with constant-colour images the output is easy to work out."""
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(32, 32, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(units, activation=activation),
        ]
    )
    model.layers[-1].set_weights([np.array(kernel, np.float32), np.array(bias, np.float32)])
    return model


def constant_images(*colours):
    return np.stack([np.broadcast_to(np.array(c, np.uint8), (32, 32, 3)) for c in colours])


def test_predict_proba_sigmoid_model_gives_two_columns():
    # logit = 0.01 * (r + g + b) - 3.825: grey 127.5 would give 0; grey 255 gives 3.825, black -3.825.
    model = tiny_model(1, "sigmoid", [[0.01], [0.01], [0.01]], [-3.825])
    probs = scoring.predict_proba(model, constant_images((0, 0, 0), (255, 255, 255), (255, 0, 0)), batch_size=2)
    fake = 1 / (1 + np.exp(-np.array([-3.825, 3.825, 2.55 - 3.825])))  # 0.0213, 0.9787, 0.2184
    assert probs.shape == (3, 2)
    assert probs[:, 1] == pytest.approx(fake, abs=1e-6)
    assert probs.sum(axis=1) == pytest.approx(1.0)
    assert scoring.p_fake(probs) == pytest.approx(fake, abs=1e-6)


def test_predict_proba_softmax_model_passes_probabilities_through():
    # logits = 0.01 * (r, g, b): black -> 1/3 each; pure red -> (e^2.55, 1, 1) / (e^2.55 + 2).
    model = tiny_model(3, "softmax", np.eye(3) * 0.01, [0, 0, 0])
    probs = scoring.predict_proba(model, constant_images((0, 0, 0), (255, 0, 0), (0, 0, 255)), batch_size=2)
    e = np.exp(2.55)
    expected = [
        [1 / 3, 1 / 3, 1 / 3],
        [e / (e + 2), 1 / (e + 2), 1 / (e + 2)],
        [1 / (e + 2), 1 / (e + 2), e / (e + 2)],
    ]
    assert probs == pytest.approx(np.array(expected), abs=1e-6)
    assert scoring.p_fake(probs) == pytest.approx([2 / 3, 2 / (e + 2), (e + 1) / (e + 2)], abs=1e-6)


# ---- Wilson interval and cross-evaluation --------------------------------------------------------


def test_wilson_interval_known_values():
    # By hand, 5/10 at 95% (z = 1.95996): centre 0.5, half width z / (1 + z^2/10) * sqrt(0.025 + z^2/400)
    # = 1.41602 * 0.18602 = 0.26341 -> [0.2366, 0.7634].
    assert cross.wilson_interval(5, 10, confidence=0.95) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3.
    assert cross.wilson_interval(81, 263, confidence=0.95) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert cross.wilson_interval(15, 148, confidence=0.95) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert cross.wilson_interval(0, 20, confidence=0.95) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert cross.wilson_interval(0, 20, confidence=0.95)[0] == 0.0
    assert cross.wilson_interval(20, 20, confidence=0.95)[1] == 1.0
    with pytest.raises(ValueError):
        cross.wilson_interval(0, 0, confidence=0.95)


def test_source_score_binary_model_on_fakes_and_reals():
    p = np.array([0.9, 0.2, 0.6, 0.5])  # fake, real, fake, fake at threshold 0.5
    on_fakes = cross.source_score(p, true_kind="dcgan_fake", class_names=BINARY, threshold=0.5, confidence=0.95)
    assert on_fakes["n"] == 4 and on_fakes["n_correct"] == 3 and on_fakes["share_correct"] == 0.75
    assert on_fakes["predicted_counts"] == {"real": 1, "fake": 3}
    assert on_fakes["share_flagged_fake"] == 0.75
    assert on_fakes["ci"] == pytest.approx(list(cross.wilson_interval(3, 4, confidence=0.95)))
    on_reals = cross.source_score(p, true_kind="real", class_names=BINARY, threshold=0.5, confidence=0.95)
    assert (on_reals["n_correct"], on_reals["share_correct"]) == (1, 0.25)
    # A softmax 2-class model's (N, 2) probabilities score the same way.
    as_columns = cross.source_score(
        np.stack([1 - p, p], axis=1), true_kind="sd_fake", class_names=BINARY, threshold=0.5, confidence=0.95
    )
    assert as_columns["n_correct"] == 3


def test_source_score_three_class_model_needs_the_exact_kind():
    probs = np.array(
        [[0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]]
    )  # argmax: dcgan, sd, dcgan, real, dcgan
    s = cross.source_score(probs, true_kind="dcgan_fake", class_names=THREE, threshold=0.5, confidence=0.95)
    assert s["n_correct"] == 3 and s["share_correct"] == pytest.approx(0.6)
    assert s["predicted_counts"] == {"real": 1, "sd_fake": 1, "dcgan_fake": 3}
    assert s["share_flagged_fake"] == pytest.approx(0.8)  # any non-real prediction
    with pytest.raises(ValueError, match="true_kind"):
        cross.source_score(probs, true_kind="gan", class_names=THREE, threshold=0.5, confidence=0.95)


def test_cross_evaluation_table_and_matrix():
    scores = {
        "cnn": {
            "real": {"n": 5000, "share_correct": 0.9434, "ci": [0.9366, 0.9496]},
            "dcgan_fake": {"n": 1000, "share_correct": 0.41, "ci": [0.3798, 0.4409]},
        },
        "effnet_3class": {"dcgan_fake": {"n": 1000, "share_correct": 0.002, "ci": [0.0005, 0.0073]}},
    }
    assert reports.cross_evaluation_table(scores).splitlines() == [
        "| model | real | dcgan_fake |",
        "|---|---|---|",
        "| cnn | 0.943 [0.94, 0.95] (n=5000) | 0.410 [0.38, 0.44] (n=1000) |",
        "| effnet_3class | n/a | 0.002 [0.00, 0.01] (n=1000) |",
    ]
    matrix, models, sources = cross.cross_evaluation_matrix(scores)
    assert models == ["cnn", "effnet_3class"] and sources == ["real", "dcgan_fake"]
    np.testing.assert_allclose(matrix, [[0.9434, 0.41], [np.nan, 0.002]])


def test_heatmap_writes_png(tmp_path):
    matrix = np.array([[0.943, 0.41], [np.nan, 0.002]])
    heatmap_png(matrix, ["cnn", "effnet"], ["real", "dcgan_fake"], "share correct", tmp_path / "h.png")
    buffer = io.BytesIO()
    heatmap_png(matrix, ["cnn", "effnet"], ["real", "dcgan_fake"], "share correct", buffer)
    for data in ((tmp_path / "h.png").read_bytes(), buffer.getvalue()):
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    with pytest.raises(ValueError, match="does not match"):
        heatmap_png(matrix, ["cnn"], ["real", "dcgan_fake"], "t", buffer)
