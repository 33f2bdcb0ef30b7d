"""The packages of ``tasks`` import only downwards: common < data < evaluation < kinds < training and
inference (side by side, neither importing the other) < core < the entry scripts and benchmarks."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tasks import PROJECT_ROOT
from tasks.kinds import KINDS

LAYERS = {"common": 0, "data": 1, "evaluation": 2, "kinds": 2.5, "training": 3, "inference": 3, "core": 4}
TOP = 5  # tasks/*.py (the scripts) and tasks/benchmarks


def _layer(module: str) -> tuple[str, int] | None:
    """The package of a ``tasks.*`` module and its layer (None outside ``tasks``)."""
    parts = module.split(".")
    if parts[0] != "tasks" or len(parts) == 1:
        return None
    package = parts[1]
    return package, LAYERS.get(package, TOP)


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = sorted(p for p in (PROJECT_ROOT / "tasks").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_imports_run_down_the_layers(path) -> None:
    module = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    own = _layer(module) or ("tasks", TOP)
    if path.parent == PROJECT_ROOT / "tasks":
        own = ("scripts", TOP)
    upward = []
    for imported in _imports(path):
        layer = _layer(imported)
        if layer is None:
            continue
        sideways = {own[0], layer[0]} == {"training", "inference"}
        if layer[1] > own[1] or sideways:
            upward.append(imported)
    assert upward == [], f"{module} ({own[0]}) imports {upward}"


@pytest.mark.slow
def test_inference_imports_no_lightning_and_no_training() -> None:
    code = (
        "import sys, tasks.inference.predict, tasks.inference.export, tasks.inference.engines; "
        "print(sorted(m for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', 'tasks.training'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_only_the_augmentation_module_imports_albumentations() -> None:
    """docs/data.md: a move to another augmentation library rewrites tasks/data/augment.py alone."""
    importers = sorted(
        str(path.relative_to(PROJECT_ROOT))
        for path in [*MODULES, *(PROJECT_ROOT / "heads").rglob("*.py"), *(PROJECT_ROOT / "backbones").rglob("*.py")]
        if any(name.split(".")[0] == "albumentations" for name in _imports(path))
    )
    assert importers == ["tasks/data/augment.py"]


# what a task is: asked of its kind (tasks/kinds) or of the heads' protocol, never found by name or attribute
TASK_NAMES = set(KINDS)
TORCHVISION_INTERNALS = {"rpn", "roi_heads", "anchor_generator", "mask_predictor", "transform", "head"}
KIND_OWNERS = ("tasks/kinds/", "tasks/benchmarks/")  # benchmarks name the tasks they measure


def _constants(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [value for element in node.elts for value in _constants(element)]
    return []


def _task_branches(path) -> list[str]:
    """Comparisons with a task's name, and ``hasattr``/``getattr`` probes of torchvision's attributes."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            names = [v for operand in (node.left, *node.comparators) for v in _constants(operand) if v in TASK_NAMES]
            found += [f"line {node.lineno}: compares with {name!r}" for name in names]
        probe = isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr")
        if probe and len(node.args) >= 2 and set(_constants(node.args[1])) & TORCHVISION_INTERNALS:
            found.append(f"line {node.lineno}: probes {_constants(node.args[1])}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_nothing_outside_the_kinds_branches_on_a_task(path) -> None:
    """docs/extending.md: a new task is a kind file, its module, evaluator and yamls, with no edits elsewhere."""
    if str(path.relative_to(PROJECT_ROOT)).startswith(KIND_OWNERS):
        return
    assert _task_branches(path) == []
