"""dvc.yaml lists every pipeline module a stage runs, so editing one reruns every stage that uses it,
and passes each stage the paths its Inputs and Outputs declare."""
import ast
import dataclasses
import importlib
import re

import pytest
import yaml

from tests.conftest import ROOT


def pipeline_imports(module: str) -> set[str]:
    """`pipeline.*` modules a module imports anywhere (top level or inside functions), transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            todo += [f for f in found if f.startswith("pipeline.") and (ROOT / (f.replace(".", "/") + ".py")).is_file()]
    return seen


def stages() -> list[tuple[str, dict]]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, stage.get("do", stage)) for name, stage in spec.items()]


@pytest.mark.parametrize("name, stage", stages(), ids=[n for n, _ in stages()])
def test_every_imported_module_is_a_dependency(name, stage):
    module = re.search(r"python -m (pipeline\.\w+)", stage["cmd"]).group(1)
    deps = set(stage["deps"])
    missing = sorted(m.replace(".", "/") + ".py" for m in pipeline_imports(module)
                     if m.replace(".", "/") + ".py" not in deps)
    assert not missing, f"stage {name} runs {module}, which imports {missing}; add them to its deps in dvc.yaml"


def test_the_check_sees_function_level_imports():
    assert "pipeline.tables" in pipeline_imports("pipeline.evaluate")     # imported at module level
    assert "pipeline.predict" in pipeline_imports("pipeline.evaluate")    # imported inside gradcam_examples()
    assert "pipeline.inference" in pipeline_imports("pipeline.evaluate")  # through pipeline.predict
    assert "pipeline.registry.client" in pipeline_imports("pipeline.register")  # a module of a package


@pytest.mark.parametrize("name, stage", stages(), ids=[n for n, _ in stages()])
def test_stages_that_read_images_depend_on_them(name, stage):
    if "--raw data/raw" in stage["cmd"]:
        assert "data/raw" in stage["deps"], f"stage {name} reads data/raw but does not depend on it"


@pytest.mark.parametrize("name, stage", stages(), ids=[n for n, _ in stages()])
def test_the_flags_of_a_stage_are_the_fields_of_its_inputs_and_outputs(name, stage):
    """dvc.yaml's paths reach run() as Inputs/Outputs fields of the same names (`--version-file`: version_file)."""
    module = importlib.import_module(re.search(r"python -m (pipeline\.\w+)", stage["cmd"]).group(1))
    if not hasattr(module, "Inputs"):
        assert name == "report", f"stage {name}: {module.__name__} has no Inputs/Outputs"
        return  # no params, no run(): render() and a main() around it
    flags = set(re.findall(r"--([a-z-]+)", stage["cmd"])) - {"params", "arch"}  # arch: train's foreach key
    fields = {f.name.replace("_", "-") for group in (module.Inputs, module.Outputs) for f in dataclasses.fields(group)}
    assert flags == fields, f"stage {name}: flags {sorted(flags)}, fields {sorted(fields)}"
