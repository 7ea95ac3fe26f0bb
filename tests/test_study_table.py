"""The study-versus-run table: verdicts follow the run's records, and a collapsed DCGAN is recognised."""

import numpy as np
from PIL import Image

from realfake.pipeline.study_table import claims, sample_diversity, write_study_table


def grid(path, tiles):
    columns = int(len(tiles) ** 0.5)
    rows = [np.concatenate(list(tiles[r * columns : (r + 1) * columns]), axis=1) for r in range(columns)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def test_sample_diversity_tells_one_pattern_from_varied_images(tmp_path):
    rng = np.random.default_rng(0)
    same = np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 16, axis=0)
    varied = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    assert sample_diversity(grid(tmp_path / "same.png", same), 4) < 1
    assert sample_diversity(grid(tmp_path / "varied.png", varied), 4) > 50


def source(correct, n=100):
    return {"n": n, "n_correct": round(correct * n), "share_correct": correct}


def records(*, cnn=0.9, eff=0.96, cnn_dcgan=0.4, eff_dcgan=0.0, three=(0.95, 0.95, 0.95)):
    evaluate = {"cnn": {"accuracy": cnn}, "efficientnet": {"accuracy": eff}}
    scores = {
        "cnn": {"real": source(0.9), "sd_fake": source(0.9), "dcgan_fake": source(cnn_dcgan)},
        "efficientnet": {"real": source(0.96), "sd_fake": source(0.96), "dcgan_fake": source(eff_dcgan)},
        "efficientnet_3class": dict(zip(("real", "sd_fake", "dcgan_fake"), map(source, three), strict=True)),
    }
    params = {"models": {"cnn": {}, "efficientnet": {"weights": "imagenet", "max_train_minutes": None}}}
    return evaluate, {"scores": scores}, params, {}


def verdicts(found):
    return {c.claim: c.verdict for c in found}


def test_a_run_like_the_study_reproduces_it():
    found = verdicts(claims(*records(three=(0.93, 0.90, 0.95)), diversity=80.0))
    assert found["CNN accuracy"] == "reproduced" and found["EfficientNetV2B3 accuracy"] == "reproduced"
    assert found["detectors fail on an unseen generator"] == "reproduced"
    assert found["adding its fakes fixes that (efficientnet_3class)"] == "reproduced"
    assert found["you can't have it both ways (efficientnet_3class)"] == "reproduced"


def test_a_run_that_has_it_both_ways_contradicts_the_study():
    found = verdicts(claims(*records(cnn_dcgan=0.95, eff_dcgan=0.97, three=(0.97, 0.97, 0.97)), diversity=80.0))
    assert found["you can't have it both ways (efficientnet_3class)"] == "contradicted"
    assert found["detectors fail on an unseen generator"] == "contradicted"


def test_every_3class_model_gets_its_claims_and_the_warnings_are_quoted():
    evaluate, cross, params, train = records(three=(0.93, 0.90, 0.95))
    cross["scores"]["fast"] = {"real": source(0.94), "sd_fake": source(0.93), "dcgan_fake": source(0.0)}
    cross["scores"]["fast_3class"] = {"real": source(0.96), "sd_fake": source(0.95), "dcgan_fake": source(0.99)}
    cross["unseen_generator"] = {"fast": {"dcgan_fake": {"share_fake_or_ood": 0.62}}}
    found = {c.claim: c for c in claims(evaluate, cross, params, train, diversity=80.0)}
    assert found["3-class accuracy (fast_3class)"].verdict == "reproduced"
    assert found["you can't have it both ways (fast_3class)"].verdict == "contradicted"  # 0.95 >= 0.93: both ways
    assert found["you can't have it both ways (efficientnet_3class)"].verdict == "reproduced"
    assert "fast 0.62" in found["detectors fail on an unseen generator"].why


def test_a_collapsed_dcgan_reproduces_nothing_that_rests_on_it():
    found = claims(*records(three=(0.93, 0.90, 0.95)), diversity=3.0)
    gan = [c for c in found if "DCGAN" in c.claim or "generator" in c.claim or "fixes" in c.claim]
    assert gan and all(c.verdict == "not reproduced" and "one repeated pattern" in c.why for c in gan)


def test_from_scratch_transfer_models_say_why(tmp_path):
    evaluate, cross, params, _ = records(eff=0.6)
    params["models"]["efficientnet"] = {"weights": None, "max_train_minutes": 10}
    train = {"efficientnet": {"stopped_by_budget": True, "epochs_run": 3, "train_images": 13500}}
    (eff,) = [c for c in claims(evaluate, cross, params, train, 80.0) if c.claim == "EfficientNetV2B3 accuracy"]
    assert eff.verdict == "not reproduced" and "from scratch" in eff.why and "10-minute" in eff.why


def test_the_table_is_written_between_markers(tmp_path):
    import json

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n")
    (tmp_path / "README.md").write_text("x\n<!-- study:start -->\nold\n<!-- study:end -->\ny\n")
    evaluate, cross, _, _ = records()
    (tmp_path / "params.yaml").write_text("models: {cnn: {}, efficientnet: {weights: null}}\ndcgan: {sample_grid: 4}\n")
    (tmp_path / "metrics" / "evaluate").mkdir(parents=True)
    for name, data in evaluate.items():
        (tmp_path / "metrics" / "evaluate" / f"{name}.json").write_text(json.dumps(data))
    (tmp_path / "metrics" / "cross_evaluate.json").write_text(json.dumps(cross))
    write_study_table(tmp_path)
    write_study_table(tmp_path)  # idempotent
    doc = (tmp_path / "docs" / "results.md").read_text()
    assert doc.count("## The study against this run") == 1 and "you can't have it both ways" in doc
    readme = (tmp_path / "README.md").read_text()
    assert "old" not in readme and "| CNN accuracy | 0.83-0.88 | 0.900 | reproduced |" in readme
