"""A stopping keyserver drains its journal into the store when the store answers, within
``journal_drain_s``; when it does not, the journal keeps every accepted write for the next
keyserver on the same data directory (or ``keyserver journal replay``)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from keyserver.app import REPLAYER, create_app
from keyserver.config import Config, build
from keyserver.errors import StoreUnavailable
from keyserver.journal import Journal
from keyserver.models import KeyStatus
from keyserver.replay import TASK_NAME
from tests.keyserver.flaky_store import PROVISIONING_SECRET, FlakyStore
from tests.keyserver.keys_harness import KEYS, REVOKE, VIN, Api, Clock

HANG_GUARD_S = 30.0  # only against a hang: never a timing assertion


class GatedStore:
    """The flaky store, gated per caller. While ``holding``, a call waits for ``release`` (a
    black-holed Redis); ``held`` is set once one does, ``cancelled`` if one was cancelled.
    With ``shut_out`` set, the journal's replay task finds it down, whoever else calls."""

    def __init__(self, inner: FlakyStore) -> None:
        self.inner = inner
        self.holding = False
        self.release = asyncio.Event()
        self.held = asyncio.Event()
        self.cancelled = False
        self.shut_out = False

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        operation = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            if self.shut_out and task is not None and task.get_name() == TASK_NAME:
                raise StoreUnavailable(
                    f"down for the replay task ({name})", may_have_succeeded=False
                )
            if self.holding:
                self.held.set()
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    self.cancelled = True
                    raise
            return await operation(*args, **kwargs)

        return call


def config(data_dir: Path, **settings: object) -> Config:
    return build(
        {"data_dir": str(data_dir), "provisioning_secret": PROVISIONING_SECRET, **settings}
    )


async def started(
    aiohttp_client: Any, clock: Clock, store: GatedStore, settings: Config
) -> tuple[Api, str]:
    """The app on ``store``, with a driver's key; returns the api and that key's id."""
    app = create_app(settings, store=store)  # type: ignore[arg-type]
    api = Api(app, await aiohttp_client(app), clock)
    owner = await api.person("owner")
    await api.vehicle(owner)
    key = await api.share(owner, await api.person("driver"))
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)  # last known, for the outage
    store.inner.fail()
    reply = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
    assert reply.status == 202, reply.data
    return api, str(key["key_id"])


async def stopped(api: Api) -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        await api.client.close()  # the app's cleanup: the drain


def pending_after_stop(path: Path) -> list[str]:
    journal = Journal.open(path)
    try:
        return [op.kind for op in journal.pending()]
    finally:
        journal.close()


async def test_a_stopping_keyserver_drains_what_its_replay_task_could_not_apply(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, flaky: FlakyStore
) -> None:
    store = GatedStore(flaky)
    settings = config(tmp_path / "server")
    api, key_id = await started(aiohttp_client, clock, store, settings)
    store.shut_out = True  # the replay task never gets through: only a drain can apply it
    flaky.recover()

    await stopped(api)

    key = await flaky.inner.key(key_id)
    assert key is not None
    assert key.status is KeyStatus.REVOKED
    assert pending_after_stop(settings.journal_path) == []


async def test_the_drain_lets_the_replay_in_flight_finish_rather_than_cut_it(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, flaky: FlakyStore
) -> None:
    store = GatedStore(flaky)
    settings = config(tmp_path / "server")
    api, key_id = await started(aiohttp_client, clock, store, settings)
    store.holding = True
    flaky.recover()
    api.app[REPLAYER].kick()
    async with asyncio.timeout(HANG_GUARD_S):
        await store.held.wait()  # the replay task is in the middle of an operation
    store.holding = False
    store.release.set()  # its call is answered, and SIGTERM comes before the task resumes

    await stopped(api)

    assert not store.cancelled
    key = await flaky.inner.key(key_id)
    assert key is not None
    assert key.status is KeyStatus.REVOKED
    assert pending_after_stop(settings.journal_path) == []


async def test_with_the_store_still_down_the_journal_keeps_the_write(
    tmp_path: Path,
    aiohttp_client: Any,
    clock: Clock,
    flaky: FlakyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = config(tmp_path / "server")
    api, key_id = await started(aiohttp_client, clock, GatedStore(flaky), settings)
    with caplog.at_level(logging.WARNING, logger="keyserver.replay"):
        await stopped(api)
    assert pending_after_stop(settings.journal_path) == ["withdraw"]
    kept = [r.fields for r in caplog.records if r.getMessage() == "journal kept at shutdown"]  # type: ignore[attr-defined]
    assert [(f["pending"], f["why"]) for f in kept] == [(1, "StoreUnavailable")]
    key = await flaky.inner.key(key_id)
    assert key is not None
    assert key.status is KeyStatus.ACTIVE  # nothing half-applied
    mode = stat.S_IMODE(os.stat(settings.journal_path).st_mode)
    assert mode == 0o600, oct(mode)


async def test_a_hung_store_holds_the_shutdown_no_longer_than_the_drain_deadline(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, flaky: FlakyStore
) -> None:
    store = GatedStore(flaky)
    settings = config(tmp_path / "server", journal_drain_s=0.05)
    api, _ = await started(aiohttp_client, clock, store, settings)
    flaky.recover()
    store.holding = True  # up, but no call is ever answered: the drain gives up at its deadline
    await stopped(api)  # returns: the hang guard is never what ends it
    assert pending_after_stop(settings.journal_path) == ["withdraw"]
