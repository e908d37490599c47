"""No import cycle between the project's modules, counting every import: top-level ones, those
inside functions and those under ``if TYPE_CHECKING:``.

A function-local import hides a cycle from the interpreter, not from the design: the two modules
still need each other. Every module of the packages and of ``tests/`` is parsed with ``ast``;
``import a.b`` is an edge to ``a.b``, ``from a import b`` to ``a.b`` when that is a module and to
``a`` otherwise. Importing ``a.b`` also runs ``a/__init__.py``, but that implicit edge is left
out: a package's ``__init__`` importing its own submodules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "keycore", "resilience", "runtime", "keyserver", "vehicle_agent", "ble_fallback", "phone",
    "lab", "tests",
)  # fmt: skip

#: Cycles found and not (yet) broken, each as the sorted names of its strongly connected
#: component. Empty: any cycle fails the test.
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, wherever in the file the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    found.add(target)
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_the_checker_finds_a_cycle_through_a_function_local_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import pkg.top\n"
        "if TYPE_CHECKING:\n"
        "    from pkg import typed\n"
        "def f():\n"
        "    from . import local\n"
        "    from .sub import thing\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    names = ["pkg.top", "pkg.typed", "pkg.local", "pkg.sub", "pkg.mod"]
    modules = {name: tmp_path for name in names}
    assert imports_of("pkg.mod", path, modules) == {"pkg.top", "pkg.typed", "pkg.local", "pkg.sub"}


def test_no_import_cycle_in_the_project() -> None:
    graph = import_graph()
    assert {"keyserver.app", "keyserver.routes.keys"} <= set(graph)  # it found the project
    assert cycles(graph) == KNOWN_CYCLES
