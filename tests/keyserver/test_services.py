"""The keyserver's shape (keyserver.resources): services that know nothing of HTTP, refusals mapped
to HTTP answers in one table, and one clock read per request."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from keyserver import errors
from keyserver.app import create_app
from keyserver.config import build
from keyserver.http import REFUSALS, error_middleware
from tests.keyserver.keys_harness import TOKEN, Api, Clock

#: The services: they receive what they use, raise domain errors, and never see a request.
SERVICES = ("issuance", "acceptance", "outage", "replay", "journal", "lastknown", "hub")
HTTP_MODULES = {"aiohttp", "keyserver.http", "keyserver.app", "keyserver.resources"}


def refusal_classes() -> list[type[errors.Refused]]:
    found: list[type[errors.Refused]] = []
    todo = [errors.Refused]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__ == errors.__name__:
                found.append(sub)
                todo.append(sub)
    return found


def test_every_refusal_has_one_http_status_and_its_own_code() -> None:
    classes = refusal_classes()
    assert classes  # the tree has refusals
    assert set(REFUSALS) == set(classes)
    assert len({c.code for c in classes}) == len(classes)
    for status in REFUSALS.values():
        assert 400 <= status < 500


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_module_imports_nothing_of_http(name: str) -> None:
    module = importlib.import_module(f"keyserver.{name}")
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {m for m in imported if m.split(".")[0] == "aiohttp"} | (imported & HTTP_MODULES)


async def test_a_refusal_leaves_as_its_http_answer(aiohttp_client: Any) -> None:
    async def refuse(request: web.Request) -> web.Response:
        raise errors.TooSoon("wait a second", retry_after=2)

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", refuse)
    client = await aiohttp_client(app)
    reply = await client.get("/")
    assert reply.status == 409
    assert reply.headers["Retry-After"] == "2"
    assert await reply.json() == {"error": {"code": "too_soon", "message": "wait a second"}}


@pytest.fixture
async def counted(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> tuple[Api, list[int]]:
    """The keyserver on a clock that notes each read."""
    reads: list[int] = []

    def counting() -> int:
        reads.append(clock.now)
        return clock.now

    app = create_app(build({"data_dir": str(tmp_path)}), clock=counting)
    return Api(app, await aiohttp_client(app), clock), reads


async def test_a_token_refresh_reads_the_clock_once(counted: tuple[Api, list[int]]) -> None:
    api, reads = counted
    owner = await api.person("owner")
    await api.vehicle(owner)
    key_id = (await api.owner_key(owner))["key_id"]
    for path in ("the device's key not yet known here", "the hot path"):
        reads.clear()
        reply = await api.call(owner, "POST", TOKEN, key_id=key_id)
        assert reply.status == 200, (path, reply.body)
        assert len(reads) == 1, path
