"""The package's layers: no import cycles, no import from a higher layer, and imports inside
functions only of optional or slow third-party packages (never to hide a cycle).

Every module of ``taggnn/`` is parsed with :mod:`ast` (nothing is imported), so the test sees
imports inside functions as well as module-level ones.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "taggnn"

#: Layers, bottom to top: a module imports only from its own layer or below. Keys are the
#: first name under ``taggnn`` (a subpackage or a top-level module); ``""`` is ``taggnn/__init__.py``.
LAYERS: Dict[str, int] = {
    "errors": 0, "utils": 0,
    "graph": 1, "data": 1,
    "nn": 2,
    "models": 3, "analysis": 3,
    "engine": 4,
    "study": 5,
    "cli": 6, "__main__": 6, "": 6,
}

#: Third-party (and platform-specific) modules a function may import: optional extras, or
#: packages slow enough to import that only the code needing them should pay for them.
FUNCTION_LEVEL_ALLOWED = frozenset({
    "av", "torchcodec", "matplotlib", "onnx", "onnxruntime", "onnxscript", "ray", "sklearn", "scipy", "mlflow",
    "huggingface_hub", "safetensors", "torch_sparse", "torch_scatter", "pytorchvideo", "psutil", "fcntl", "msvcrt",
    "tensorboard", "torch.utils.tensorboard", "wandb", "torch.distributed", "torch_geometric.nn",
})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> Dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of ``from <node.module> import ...`` inside ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Import:
    def __init__(self, target: str, line: int, in_function: bool):
        self.target, self.line, self.in_function = target, line, in_function


def imports_of(module: str, path: Path) -> List[Import]:
    """Every import statement of a module: its absolute target (a ``from X import name`` of a
    submodule ``X.name`` counts as an import of the submodule) and whether it is in a function."""
    found: List[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                continue  # annotations only: never imported at run time
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, child)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append(Import(sub if sub in MODULES else base, child.lineno, in_function))
            visit(child, inside)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def internal(target: str) -> bool:
    return target == "taggnn" or target.startswith("taggnn.")


def owner(target: str) -> str:
    """The imported taggnn module (the longest module name that ``target`` starts with)."""
    while target not in MODULES:
        target = target.rpartition(".")[0]
    return target


def layer_of(module: str) -> Tuple[str, int]:
    key = module.split(".")[1] if "." in module else ""
    if key not in LAYERS:
        raise AssertionError(f"{module} is in no layer: add {key!r} to LAYERS in {__file__}")
    return key, LAYERS[key]


IMPORTS = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_the_package_was_found():
    assert {"taggnn.cli", "taggnn.engine.trainer", "taggnn.data.datasets", "taggnn.graph.builder"} <= set(MODULES)


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for module, imports in IMPORTS.items():
        name, level = layer_of(module)
        for item in imports:
            if not internal(item.target):
                continue
            target = owner(item.target)
            target_name, target_level = layer_of(target)
            if target_level > level:
                upward.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{item.line} ({name}, layer {level}) "
                              f"imports {target} ({target_name}, layer {target_level})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph: Dict[str, Set[str]] = {module: set() for module in MODULES}
    for module, imports in IMPORTS.items():
        for item in imports:
            if internal(item.target):
                target = owner(item.target)
                if target != module:
                    graph[module].add(target)
    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    assert not cycles, "import cycles between modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def _allowed_in_function(target: str) -> bool:
    return any(target == name or target.startswith(name + ".") for name in FUNCTION_LEVEL_ALLOWED)


def test_imports_inside_functions_are_only_of_optional_or_slow_packages():
    hidden = [f"{MODULES[module].relative_to(PACKAGE.parent)}:{item.line} imports {item.target}"
              for module, imports in IMPORTS.items() for item in imports
              if item.in_function and (internal(item.target) or not _allowed_in_function(item.target))]
    assert not hidden, ("imports inside functions (move them to the top of the module; only optional or slow "
                        "packages may be imported where they are used):\n" + "\n".join(hidden))


def test_the_package_imports_no_tests_or_benchmarks():
    leaks = [f"{module} imports {item.target}" for module, imports in IMPORTS.items() for item in imports
             if item.target.split(".")[0] in ("tests", "benchmarks")]
    assert not leaks


@pytest.mark.parametrize("source,expected", [
    ("from ..data import features\n", "taggnn.data.features"),
    ("from ..data.views import view_indices\n", "taggnn.data.views"),
    ("from .checkpoint import load_checkpoint\n", "taggnn.engine.checkpoint"),
    ("from .. import errors\n", "taggnn.errors"),
])
def test_relative_imports_are_resolved(source, expected, tmp_path):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert [owner(item.target) for item in imports_of("taggnn.engine.example", path)] == [expected]
