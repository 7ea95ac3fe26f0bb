"""Named recipes: every recipe file makes a valid params.yaml, runs as named DVC experiments, and its results are read
back from the experiments' git refs into results/ and the README's table."""

import hashlib
import json
import subprocess
from subprocess import CompletedProcess

import pytest
import yaml
from stage_helpers import REPO, tiny_params

from realfake.errors import ParamsError
from realfake.paths import STATE_DIR_ENV, ProjectPaths
from realfake.pipeline import recipes
from realfake.pipeline import ship as ship_module


def test_every_recipe_makes_a_valid_params_yaml():
    names = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    assert {"cpu-quick", "reference-study", "fast-10min", "fast-30min", "fast-60min", "fast-gpu", "fast-robust"} <= set(
        names
    )
    for name in names:
        recipes.check(REPO, recipes.load_recipe(REPO, name))  # raises ParamsError naming the recipe and key


def test_cpu_quick_is_params_yaml_itself():
    assert recipes.load_recipe(REPO, "cpu-quick").overrides == {}


def project(tmp_path, recipe_text: str, name: str = "demo"):
    (tmp_path / "recipes").mkdir(parents=True)
    (tmp_path / "recipes" / f"{name}.yaml").write_text(recipe_text)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    return recipes.load_recipe(tmp_path, name)


def test_unknown_keys_and_bad_values_are_refused_before_any_run(tmp_path):
    recipe = project(tmp_path, "description: x\nset:\n  models.fast.epoch: 3\n")
    with pytest.raises(ParamsError, match=r"recipes/demo.yaml: models.fast.epoch: not a key of params.yaml"):
        recipes.check(tmp_path, recipe)
    recipe = project(tmp_path / "b", "set:\n  models.fast.epochs: 0\n")
    with pytest.raises(ParamsError, match=r"models.fast.epochs: must be greater than 0"):
        recipes.check(tmp_path / "b", recipe)
    with pytest.raises(ParamsError, match="no such recipe; known recipes: demo"):
        recipes.load_recipe(tmp_path, "nope")


def test_an_experiment_per_seed_with_every_override(tmp_path):
    recipe = project(tmp_path, "targets: [evaluate@fast]\nseeds: [42, 1]\nset:\n  prepare.per_class: all\n"
                     "  prepare.augment: []\n  models.fast.stage_filters: [8, 16]\n")  # fmt: skip
    command = recipes.exp_command(recipe, 1)
    assert command[:6] == ["dvc", "exp", "run", "--temp", "-n", "demo-seed1"]
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "-S"]
    assert pairs == [
        "base.seed=1",
        'prepare.per_class="all"',
        "prepare.augment=[]",
        "models.fast.stage_filters=[8, 16]",
    ]
    assert command[-1] == "evaluate@fast"
    assert recipe.command() == 'make exp RECIPE=demo SEEDS="42 1"'


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def fake_experiment(root, name: str, seed: int, accuracy: float) -> None:
    """A commit holding what an experiment's run leaves in git, stored under refs/exps like DVC's own."""
    params = tiny_params(base={"seed": seed})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for folder, data in {
        "evaluate": {"accuracy": accuracy, "accuracy_ci": [accuracy - 0.01, accuracy + 0.01], "roc_auc": 0.99,
                     "calibration": {"ece": 0.01}, "n": 100},
        "train": {"epochs_run": 3, "train_seconds": 120.0, "machine": "2-core test CPU"},
        "robustness": {"robust_accuracy": accuracy - 0.1, "scores": {"none": {"accuracy": accuracy},
                                                                     "blur_1": {"accuracy": accuracy - 0.1}}},
    }.items():  # fmt: skip
        (root / "metrics" / folder).mkdir(parents=True, exist_ok=True)
        (root / "metrics" / folder / "fast.json").write_text(json.dumps(data))
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", name)
    base = git(root, "rev-parse", "HEAD~1")
    git(root, "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/{name}", "HEAD")
    git(root, "reset", "-q", "--hard", "HEAD~1")


def test_record_reads_every_seed_back_from_git_and_writes_the_tables(tmp_path):
    recipe = project(tmp_path, "description: A demo.\nreport: [fast]\nseeds: [42, 1]\nset: {}\n")
    (tmp_path / "README.md").write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nlayout\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    fake_experiment(tmp_path, "demo-seed42", 42, 0.97)
    fake_experiment(tmp_path, "demo-seed1", 1, 0.95)

    result = json.loads(recipes.record(tmp_path, recipe).read_text())
    assert [row["seed"] for row in result["seeds"]] == [42, 1]
    stats = result["summary"]["fast"]["test_accuracy"]
    assert stats["mean"] == pytest.approx(0.96) and stats["sd"] == pytest.approx(0.01414, abs=1e-4)
    assert result["summary"]["fast"]["train_minutes"]["mean"] == 2.0
    assert result["command"] == 'make exp RECIPE=demo SEEDS="42 1"'

    (tmp_path / "recipes" / "reference-study.yaml").write_text("published:\n  cnn: {accuracy: 0.83}\n")
    recipes.write_tables(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("layout\n") and "old" not in readme
    assert "| `demo` | fast | 0.9600 ± 0.0141 |" in readme
    assert "`reference-study` | not run yet" in readme
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "| 42 | 0.9700 [0.9600, 0.9800] |" in results and "blur_1" in results


def test_record_without_experiments_says_how_to_run_them(tmp_path):
    recipe = project(tmp_path, "seeds: [3]\nreport: [fast]\n")
    git(tmp_path, "init", "-q")
    with pytest.raises(
        recipes.RealfakeError, match=r'no experiments demo-seed\*; run `make exp RECIPE=demo SEEDS="3"`'
    ):
        recipes.record(tmp_path, recipe)


def test_every_temporary_copy_keeps_its_training_state_in_the_workspace(tmp_path, monkeypatch):
    """`dvc exp run --temp` gives each run a new copy; a rerun after an interruption must find the old epochs."""
    recipe = project(tmp_path, "targets: [evaluate@fast]\nseeds: [42, 1]\nset: {}\n")
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    seen = []
    monkeypatch.setattr(recipes.subprocess, "run", lambda cmd, **kw: seen.append(kw) or CompletedProcess(cmd, 0))
    recipes.run(tmp_path, recipe, (42, 1))
    assert [kw["env"][STATE_DIR_ENV] for kw in seen] == [str(tmp_path.resolve() / ".cache" / "state")] * 2
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpcopy"
    monkeypatch.setenv(STATE_DIR_ENV, seen[0]["env"][STATE_DIR_ENV])
    assert ProjectPaths(copy).state == tmp_path.resolve() / ".cache" / "state"


def test_extra_overrides_are_checked_against_params_yaml_before_dvc_runs(tmp_path, monkeypatch):
    recipe = project(tmp_path, "targets: [evaluate@fast]\nseeds: [42]\nset:\n  prepare.per_class: 10\n")
    seen = []
    monkeypatch.setattr(recipes.subprocess, "run", lambda cmd, **kw: seen.append((cmd, kw)) or CompletedProcess(cmd, 0))
    for bad, message in (("nosuch.epochs=3", r"-S: nosuch.epochs: params.yaml has no section 'nosuch'"),
                         ("models.fast.epoch=3", r"-S: models.fast.epoch: not a key of params.yaml"),
                         ("models.fast.epochs", r"expected key=value")):  # fmt: skip
        with pytest.raises(ParamsError, match=message):
            recipes.run(tmp_path, recipe, (42,), recipes.parse_sets([bad]))
    assert seen == []  # refused before any `dvc exp run`
    recipes.run(tmp_path, recipe, (42,), recipes.parse_sets(["models.fast.epochs=2", "prepare.augment=[]"]))
    ((command, kw),) = seen
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "-S"]
    assert pairs == ["base.seed=42", "prepare.per_class=10", "models.fast.epochs=2", "prepare.augment=[]"]
    assert command[3] == "--temp" and kw["env"]["REALFAKE_RECIPE"] == "demo"  # the parent run names its recipe


def shipped_experiment(root, model: str) -> None:
    """An experiment ref whose dvc.lock names `model`'s files, which lie in DVC's cache."""
    outs = []
    for suffix in (".keras", ".detector.npz"):
        md5 = hashlib.md5(f"{model}{suffix}".encode()).hexdigest()
        cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(f"{model}{suffix}".encode())
        outs.append({"path": f"models/{model}{suffix}", "md5": md5})
    (root / "dvc.lock").write_text(yaml.safe_dump({"stages": {f"train@{model}": {"outs": outs}}}))
    fake_experiment(root, "demo-seed42", 42, 0.97)


def test_ship_writes_files_named_after_the_model_and_refuses_another_models(tmp_path, monkeypatch):
    project(tmp_path, "report: [fast]\nseeds: [42]\n")
    (tmp_path / ".gitignore").write_text("/.dvc/cache/\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    shipped_experiment(tmp_path, "fast_robust")
    import realfake.pipeline.model_card as model_card

    monkeypatch.setattr(model_card, "model_card", lambda card: f"# {card['model_section']}\n")
    older = tmp_path / ship_module.SHIPPED / "older"  # shipped before, by another recipe: it stays
    older.mkdir(parents=True)
    (older / "card.json").write_text('{"model_section": "fast"}')
    (tmp_path / ship_module.SHIPPED / "DEFAULT").write_text("older\n")
    exported = []
    monkeypatch.setattr(ship_module, "_export_onnx", lambda keras, onnx: exported.append((keras.name, onnx.name)))
    recipe = recipes.load_recipe(tmp_path, "demo")
    target = recipes.ship(tmp_path, recipe, model="fast_robust", seed=42)
    assert target == tmp_path / ship_module.SHIPPED / "demo"  # the recipe's own folder, now the default
    assert (target.parent / "DEFAULT").read_text() == "demo\n" and (older / "card.json").is_file()
    assert (target / "fast_robust.keras").read_bytes() == b"fast_robust.keras"
    assert (target / "fast_robust.detector.npz").is_file() and not (target / "fast.keras").exists()
    card = json.loads((target / "card.json").read_text())
    assert card["model_section"] == "fast_robust" and card["files"]["keras"] == "fast_robust.keras"
    assert exported == [("fast_robust.keras", "fast_robust.onnx")]
    with pytest.raises(recipes.RealfakeError, match=r"ships fast_robust now; shipping fast would replace its card"):
        recipes.ship(tmp_path, recipe, model="fast", seed=42)
    assert (target / "fast_robust.keras").is_file()
