"""keycore keeps its promise, "pure, no I/O" (its docstring): no module of it imports asyncio,
prometheus_client or any other module that reaches the network, the disk, the clock, the process
or the console. Every import counts, function-local and ``TYPE_CHECKING`` ones too, so the modules
are read with ``ast`` rather than imported. The breaker, overload and waiting code lives in
``resilience``, the console scripts' entry in ``runtime.extras``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import keycore

PACKAGE = Path(keycore.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
# The two by name, then the rest of what would be I/O or its seam. Randomness stays
# allowed (``secrets``): new token ids, challenges and keys are keycore's job.
NOT_IN_KEYCORE = frozenset(
    {
        "asyncio",
        "prometheus_client",
        "aiohttp",
        "redis",
        "socket",
        "ssl",
        "selectors",
        "http",
        "urllib",
        "sqlite3",
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "subprocess",
        "threading",
        "multiprocessing",
        "signal",
        "sys",
        "importlib",
        "logging",
        "time",
        "datetime",
    }
)


def imported_modules(source: str) -> set[str]:
    """The top-level names of every absolute import in ``source``, wherever it stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_the_walk_sees_every_kind_of_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import asyncio\n"
        "def f():\n    from prometheus_client.core import Metric\n"
        "class C:\n    import os.path as p\n"
        "from . import sibling\n"
    )
    assert imported_modules(source) == {"typing", "asyncio", "prometheus_client", "os"}


def test_keycore_has_modules_to_check() -> None:
    assert PACKAGE / "token.py" in MODULES
    assert PACKAGE / "__init__.py" in MODULES


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_keycore_module_imports_io(module: Path) -> None:
    assert imported_modules(module.read_text()) & NOT_IN_KEYCORE == set()
