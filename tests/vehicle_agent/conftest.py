"""Fixtures for the channel tests: a keyserver app on a loopback port, its clock, an owner, and
the key of the owner's car as the keyserver knows it (tests/vehicle_agent/channel_harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keycore import SoftwareSigner
from keyserver.app import create_app
from keyserver.config import build
from tests.keyserver.keys_harness import Api, Clock, Person
from tests.vehicle_agent.channel_harness import register


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> Api:
    app = create_app(build({"data_dir": str(tmp_path / "server")}))
    return Api(app, await aiohttp_client(app), clock)


@pytest.fixture
async def owner(api: Api) -> Person:
    return await api.person("owner")


@pytest.fixture
async def vehicle_key(api: Api, owner: Person) -> SoftwareSigner:
    return await register(api, owner)
