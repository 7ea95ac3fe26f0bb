"""`make compare`: one row per DVC experiment, its changed params and headline metrics, in under 120 columns."""

import json

from realfake.pipeline import compare


def rev(params: dict, metrics: dict, name: str | None = None, rev_id: str = "abc1234def") -> dict:
    files = {f"metrics/{folder}/{model}.json": {"data": data} for (folder, model), data in metrics.items()}
    return {"rev": rev_id, "name": name, "data": {"params": {"params.yaml": {"data": params}}, "metrics": files}}


def evaluated(accuracy: float, robust: float) -> dict:
    return {("evaluate", "fast"): {"accuracy": accuracy, "roc_auc": 0.99, "calibration": {"ece": 0.004}},
            ("robustness", "fast"): {"robust_accuracy": robust},
            ("evaluate", "cnn"): {"accuracy": 0.899, "roc_auc": 0.96, "calibration": {"ece": 0.0118}}}  # fmt: skip


PARAMS = {"base": {"seed": 42}, "prepare": {"per_class": 2500, "augment": ["rot90", "hflip"]},
          "models": {"fast": {"epochs": 15, "stage_filters": [64, 128, 256]}}}  # fmt: skip


def shown() -> list[dict]:
    """What `dvc exp show --json` prints: baselines, each with its experiments and their revisions."""
    long_name = {**PARAMS, "prepare": {"per_class": "all", "augment": []},
                 "models": {"fast": {"epochs": 26, "stage_filters": [48, 96, 192]}}}  # fmt: skip
    experiments = [
        {"name": "fast-60min-seed42", "executor": None,
         "revs": [rev(long_name, evaluated(0.9757, 0.785), name="fast-60min-seed42")]},
        {"name": "smoke-seed1", "executor": None,
         "revs": [rev({**PARAMS, "base": {"seed": 1}}, evaluated(0.71, 0.6), name="smoke-seed1")]},
        {"name": "same", "executor": None, "revs": [rev(PARAMS, evaluated(0.9358, 0.725), name="same")]},
    ]  # fmt: skip
    return [{**rev(PARAMS, evaluated(0.9358, 0.725), name="main"), "experiments": experiments}]


def test_one_row_per_experiment_with_its_changes_and_headline_metrics():
    table = compare.rows(shown())
    assert [r["name"] for r in table] == ["main", "fast-60min-seed42", "smoke-seed1", "same"]
    assert table[1]["model"] == "fast" and table[1]["metrics"] == [0.9757, 0.99, 0.004, 0.785]
    assert table[1]["changed"] == {"models.fast.epochs": 26, "models.fast.stage_filters": [48, 96, 192],
                                   "prepare.augment": [], "prepare.per_class": "all"}  # fmt: skip
    assert table[2]["changed"] == {"base.seed": 1}
    text = compare.render(table)
    lines = text.splitlines()
    assert all(len(line) < 120 for line in lines), max(map(len, lines))
    assert lines[0].split()[:7] == ["experiment", "model", "acc", "AUC", "ECE", "robust", "changed"]
    assert "fast-60min-seed42" in lines[3] and "0.9757" in lines[3] and "0.7850" in lines[3]
    assert "  fast.epochs=26, fast.stage_filters=[48,96,192], prep" in lines[3]  # `models.` left off
    assert lines[3].endswith("…")  # the rest does not fit
    assert lines[2].endswith("(baseline)") and lines[5].endswith("none")
    assert compare.rows(shown(), model="cnn")[1]["metrics"][:3] == [0.899, 0.96, 0.0118]


def test_the_command_reads_a_saved_listing(tmp_path, capsys):
    listing = tmp_path / "exp.json"
    listing.write_text(json.dumps(shown()))
    assert compare.main(["--json", str(listing)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 6 and "smoke-seed1" in out and "base.seed=1" in out
