"""dvc.yaml lists, for every stage, every library file that computes its outputs (its script's imports at any depth,
also inside functions, and what glue calls), so a change to any of them re-runs the stage; it lists no glue (logging,
registry, serving, signals), so editing those re-runs nothing; and no stage script imports another."""

import ast
from pathlib import Path

import yaml
from module_deps import GLUE, REPO, SRC, _imported, closure, is_glue, module_file, module_name, stage_deps

STAGES = REPO / "stages"


def stage_scripts() -> dict[str, tuple[Path, list[str]]]:
    """dvc.yaml stage name -> (its script, its deps)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()
        assert words[:2] == ["sh", "stages/run.sh"], f"{name}: run stages through stages/run.sh, got {stage['cmd']}"
        out[name] = (STAGES / f"{words[2]}.py", stage["deps"])
    return out


def test_every_stage_depends_on_every_module_it_imports():
    for name, (script, deps) in stage_scripts().items():
        assert script.is_file(), f"{name}: {script} missing"
        needed = set(stage_deps(script)) | {str(script.relative_to(REPO)), "stages/run.sh"}
        missing = sorted(needed - set(deps))
        assert not missing, f"dvc.yaml stage {name!r}: add to deps: {', '.join(missing)}"


def test_no_stage_depends_on_glue():
    for name, (script, deps) in stage_scripts().items():
        needed = set(stage_deps(script))
        listed = {d for d in deps if d.startswith("src/")}
        glue = sorted(d for d in listed if is_glue(module_name(REPO / d)))
        assert not glue, f"dvc.yaml stage {name!r}: glue is not a dependency, remove: {', '.join(glue)}"
        assert listed <= needed, f"dvc.yaml stage {name!r}: not imported, remove: {', '.join(sorted(listed - needed))}"


def test_data_stages_do_not_depend_on_model_code():
    """Editing a Keras layer must not re-decode or re-sample the dataset."""
    for name in ("download", "prepare"):
        _, deps = stage_scripts()[name]
        assert not [d for d in deps if d.startswith("src/realfake/models/")], f"{name}: {deps}"


def test_loading_a_model_brings_its_layers():
    """The computing closure skips `realfake/__init__`'s lazy Keras hook; models load through models/saving.py,
    which must itself import the custom layers, so a stage that loads a model depends on them."""
    saving = SRC / "realfake" / "models" / "saving.py"
    assert "realfake.models.layers" in _imported(saving, "realfake.models", top_level_only=True)


def test_glue_is_told_apart(tmp_path):
    assert is_glue("realfake.pipeline.tracking") and is_glue("realfake.serving.registry")
    assert not is_glue("realfake.pipeline.training_run") and not is_glue("realfake.training.fit")
    assert set(GLUE) == {"realfake.pipeline", "realfake.serving"}
    script = tmp_path / "stage.py"  # glue is followed into the computing code it calls, but not listed
    script.write_text("from realfake.pipeline import stage\n")
    found = {str(p.relative_to(REPO)) for p in closure(script, skip_glue=True)}
    assert "src/realfake/data/prepare.py" in found and "src/realfake/pipeline/stage.py" not in found


def test_listed_code_dependencies_exist():
    for name, (_, deps) in stage_scripts().items():
        code = [d for d in deps if d.startswith(("src/", "stages/"))]
        assert all((REPO / d).is_file() for d in code), f"{name}: {[d for d in code if not (REPO / d).is_file()]}"


def test_no_stage_imports_another():
    scripts = {p.stem for p in STAGES.glob("*.py")}
    for script in STAGES.glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not set(n.split(".")[0] for n in names) & scripts, f"{script.name} imports a stage: {names}"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    """The check itself can fail: a function-level import of a module is found."""
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from realfake.evaluation import calibration\n")
    found = {str(p.relative_to(REPO)) for p in closure(script)}
    assert "src/realfake/evaluation/calibration.py" in found and "src/realfake/evaluation/__init__.py" in found
    assert module_file("realfake.no_such_module") is None


def test_serving_imports_nothing_from_the_pipeline():
    """Serving is what users install and run; the pipeline's glue (tracking, recipes) stays out of it."""
    for path in (SRC / "realfake" / "serving").rglob("*.py"):
        imported = _imported(path, "realfake.serving")
        assert not [n for n in imported if n.startswith("realfake.pipeline")], f"{path.name} imports the pipeline"


def test_models_survive_a_failed_or_interrupted_stage():
    """DVC deletes a stage's outputs before running it unless they are `persist`; every model file is, so a stage that
    fails or is interrupted leaves the last good model in place (stages replace their outputs atomically)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            path, spec = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if path.startswith("models/"):
                assert spec.get("persist") is True, f"dvc.yaml stage {name!r}: make {path} persist: true"
