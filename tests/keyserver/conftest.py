"""Store fixtures: every contract test runs against SQLite and against a real redis-server."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deploy.processes import RedisServer
from keyserver.store import Store


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        from keyserver.store.sqlite import SQLiteStore

        opened: Store = await SQLiteStore.open(tmp_path / "keyserver.db")
    else:
        from keyserver.store.redis import RedisStore

        server: RedisServer = request.getfixturevalue("redis_server")
        # a fresh key prefix per test: tests share one server but never each other's data
        opened = await RedisStore.connect(server.url, prefix=f"t{secrets.token_hex(4)}:")
    try:
        yield opened
    finally:
        await opened.close()
