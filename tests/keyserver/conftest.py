"""Store fixtures: every contract test runs against SQLite and against a real redis-server; and
the app on a store that fails on demand (``flaky``, ``flaky_api``) for the degraded-answer and
journal tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from keyserver.app import create_app
from keyserver.config import build
from keyserver.store import Store
from lab.processes.redis_server import RedisServer
from tests.keyserver.flaky_store import FlakyStore, flaky_config, open_flaky
from tests.keyserver.keys_harness import NO_RATE_LIMITS, Api, Clock


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


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    """An SQLite store that fails while the test says so (tests.keyserver.flaky_store)."""
    opened = await open_flaky(tmp_path / "keyserver.db")
    yield opened
    await opened.close()


@pytest.fixture
async def flaky_api(tmp_path: Path, aiohttp_client: Any, clock: Clock, flaky: FlakyStore) -> Api:
    """The keyserver on the ``flaky`` store, its data (journal, key ring) in ``tmp_path/server``."""
    app = create_app(flaky_config(tmp_path / "server"), store=flaky)  # type: ignore[arg-type]
    return Api(app, await aiohttp_client(app), clock)


@pytest.fixture
async def unlimited_api(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> Api:
    """The keyserver with its rate limits off (``NO_RATE_LIMITS``): for the tests of what still
    holds were a flood to get through them (many instances each count on their own)."""
    app = create_app(build({"data_dir": str(tmp_path), **NO_RATE_LIMITS}))
    return Api(app, await aiohttp_client(app), clock)
