"""dvc.yaml lists, for every stage, every library file its script imports (at any depth, also inside functions), so
a change to any of them re-runs the stage; and no stage script imports another."""

import ast
from pathlib import Path

import yaml
from module_deps import REPO, closure, module_file

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
        needed = {str(p.relative_to(REPO)) for p in closure(script)} | {str(script.relative_to(REPO)), "stages/run.sh"}
        missing = sorted(needed - set(deps))
        assert not missing, f"dvc.yaml stage {name!r}: add to deps: {', '.join(missing)}"


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
