"""Each package's errors.py draws its error tree, and the tree is complete: every exception class
defined anywhere in the package roots in the package's base error, and appears in the drawing
under the class it derives from. Nothing else is drawn (no stale names).

Classes are found by importing every module of the package; a class statement inside a function
or a class body could hide an exception from that, so the sources are also read with ``ast`` and
such a statement is refused outright."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

# The package, and the name of its base error in its errors.py (None: it defines no exception).
BASES: dict[str, str | None] = {
    "keycore": "KeycoreError",
    "resilience": "ResilienceError",
    "runtime": None,
    "keyserver": "KeyserverError",
    "vehicle_agent": "AgentError",
    "ble_fallback": "BleError",
    "phone": "PhoneError",
    "lab": "LabError",
}
_NODE = re.compile(r"^(?P<lead>[ │]*)(?:(?P<branch>[├└])── )?(?P<name>_?[A-Z]\w*)\b")


def modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    names = [package, *(m.name for m in pkgutil.walk_packages(root.__path__, f"{package}."))]
    return [importlib.import_module(name) for name in names]


def exceptions(package: str) -> dict[str, type[BaseException]]:
    """Every exception class defined at the top of a module of ``package``, by name."""
    found: dict[str, type[BaseException]] = {}
    for module in modules(package):
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                assert value.__name__ not in found, f"two {value.__name__} in {package}"
                found[value.__name__] = value
    return found


def drawn_tree(docstring: str, base: str) -> dict[str, str | None]:
    """The tree drawn in an errors.py docstring: each drawn class and the class it hangs under
    (None for the base). A child's branch stands in the column where its parent's name starts."""
    parents: dict[str, str | None] = {}
    by_column: dict[int, str] = {}
    lines = docstring.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{base} "))
    for line in lines[start:]:
        if parents and not line.strip():
            break  # the blank line that ends the drawing
        match = _NODE.match(line)
        if match is None or (match["branch"] is None and parents):
            continue  # a description's next line: no node
        column = len(match["lead"])
        if match["branch"] is None:
            parents[match["name"]] = None
            by_column[column] = match["name"]
            continue
        assert column in by_column, f"{match['name']} hangs under nothing: {line!r}"
        parents[match["name"]] = by_column[column]
        by_column[column + 4] = match["name"]
        for deeper in [c for c in by_column if c > column + 4]:
            del by_column[deeper]
    return parents


def test_the_drawing_is_read_as_a_tree() -> None:
    docstring = """Errors.

    Base            base
    ├── One         a line
    │   │           that goes on
    │   └── Two     under One
    └── Three       last

Prose With Capitals is not drawn.
"""
    assert drawn_tree(docstring, "Base") == {
        "Base": None,
        "One": "Base",
        "Two": "One",
        "Three": "Base",
    }


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_exception_roots_in_its_package_base(package: str) -> None:
    found = exceptions(package)
    base_name = BASES[package]
    if base_name is None:
        assert found == {}, f"{package} defines exceptions: give it an errors.py and a base"
        return
    base = getattr(importlib.import_module(f"{package}.errors"), base_name)
    assert found[base_name] is base
    strays = {name for name, cls in found.items() if not issubclass(cls, base)}
    assert strays == set(), f"{package}: not under {base_name}"


@pytest.mark.parametrize("package", sorted(name for name, base in BASES.items() if base))
def test_errors_py_draws_every_exception_under_its_parent(package: str) -> None:
    base_name = BASES[package]
    assert base_name is not None
    errors = importlib.import_module(f"{package}.errors")
    assert errors.__doc__ is not None
    drawn = drawn_tree(errors.__doc__, base_name)
    found = exceptions(package)
    assert set(drawn) == set(found), f"{package}/errors.py: the tree and the code differ"
    for name, parent in drawn.items():
        cls = found[name]
        if parent is None:
            assert name == base_name
        else:
            assert found[parent] in cls.__bases__, f"{name} is drawn under {parent}"


_BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if inspect.isclass(value) and issubclass(value, BaseException)
}


@pytest.mark.parametrize("package", sorted(BASES))
def test_no_exception_class_is_defined_out_of_sight(package: str) -> None:
    """A class statement inside a function or another class is not seen by the import walk:
    none may derive from an exception (by a built-in's name, or a name ending in Error or
    Exception, the project's convention)."""
    root = Path(importlib.import_module(package).__file__ or "").parent
    hidden: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or id(node) in top:
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else b.attr
                for b in node.bases
                if isinstance(b, ast.Name | ast.Attribute)
            }
            if any(b in _BUILTIN_EXCEPTIONS or b.endswith(("Error", "Exception")) for b in bases):
                hidden.append(f"{path.relative_to(root)}: {node.name}")
    assert hidden == []
