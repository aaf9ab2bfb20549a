"""The import floors of the library: a module imports only from its own floor or the floors below it.

Reading the library bottom-up then never needs a module from further up. The one import that reaches up
is declared in ``ALLOWED_UPWARD`` and must sit inside a function (``EditableModel.from_defaults`` trains the
default parts with :mod:`serac.training.recipe`). Run on its own with ``python -m pytest tests/test_layering.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "serac"

#: From the ground up. A module belongs to the floor of its longest listed prefix.
FLOORS: list[tuple[str, ...]] = [
    # descriptors and helpers
    (
        "serac._version",
        "serac.files",
        "serac.edits",
        "serac.chat",
        "serac.queries",
        "serac.metrics",
        "serac.offline",
        "serac.durable_folder",
    ),
    # the parts
    ("serac.store", "serac.counterfactual", "serac.in_context", "serac.data"),
    ("serac.scope", "serac.conversation"),
    ("serac.routing",),
    # the edit side as one object, and the SERAC folder it is saved in
    ("serac.folder", "serac.memory"),
    # what wraps or edits a base model: SERAC's wrapper, and the editors it is compared with (the edit
    # cache routes rows with serac.routing; MEND's and SaLEM's packages hold their network training too)
    (
        "serac.modeling",
        "serac.editors",
        "serac.editors.mend",
        "serac.editors.salem",
    ),
    ("serac.training",),
    # entry points; the package's __init__ is the public face over all of them
    ("serac.bench", "serac.quickstart", "serac.cli", "serac.__main__", "serac.serve", "serac"),
]

#: (importer, imported) pairs allowed to reach up, each only from inside a function.
ALLOWED_UPWARD = {("serac.modeling", "serac.training.recipe")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def floor_of(module: str) -> int:
    best, best_length = None, -1
    for index, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS")
    return best


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported serac module, line, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, deferred) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    # ``from serac import offline`` imports the module serac.offline, not the package.
                    candidate = f"{base}.{alias.name}"
                    found.append((candidate if candidate in modules else base, child.lineno, deferred))
            visit(child, inner)

    visit(tree, False)
    return [(name, line, deferred) for name, line, deferred in found if name.split(".")[0] == "serac"]


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = all_modules()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def test_every_module_is_on_a_floor():
    for module in all_modules():
        floor_of(module)


def test_no_import_reaches_up():
    upward = []
    for module, imports in import_graph().items():
        for imported, line, deferred in imports:
            if floor_of(imported) <= floor_of(module):
                continue
            if (module, imported) in ALLOWED_UPWARD and deferred:
                continue
            upward.append(
                f"{module}:{line} imports {imported} (floor {floor_of(module)} -> {floor_of(imported)})"
            )
    assert upward == []


def test_the_allowed_upward_import_is_deferred_and_still_there():
    graph = import_graph()
    for module, imported in ALLOWED_UPWARD:
        uses = [deferred for name, _, deferred in graph[module] if name == imported]
        assert uses and all(uses), f"{module} must import {imported} inside a function only"


def test_no_import_circle():
    graph = {
        module: {name for name, _, _ in imports if name != module and (module, name) not in ALLOWED_UPWARD}
        for module, imports in import_graph().items()
    }
    # The package __init__ re-exports the public names; importing a submodule never needs it.
    graph.pop("serac", None)
    for edges in graph.values():
        edges.discard("serac")
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def walk(module: str, trail: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                circles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                walk(imported, [*trail, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert circles == []


@pytest.mark.parametrize("package", ["serac.training", "serac.bench"])
def test_lower_floors_do_not_import_the_upper_packages(package):
    # The serving install has no training or benchmark dependencies: nothing below them may need them.
    for module, imports in import_graph().items():
        if floor_of(module) < floor_of(package):
            assert all(
                not name.startswith(package) or (module, name) in ALLOWED_UPWARD for name, _, _ in imports
            ), module


#: Modules that are data (templates, word lists), not code: their length is the table's.
DATA_TABLES = {"serac.data.relations"}
MAX_MODULE_LINES = 800


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {
        module: lines
        for module, path in all_modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES and module not in DATA_TABLES
    }
    assert long == {}
