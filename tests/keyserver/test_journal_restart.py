"""An accepted revocation is never lost with a keyserver process: real ``keyserver serve``
processes on a real redis-server, a revocation answered 202 (journaled) while Redis is down,
then the keyserver SIGKILLed in the middle of the outage. Either a keyserver restarted on the
same data directory replays it once Redis is back, or, for a keyserver gone for good, the
operator's ``keyserver journal replay`` does, and the running keyservers hear of it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from keycore.cose import holder_id
from keyserver import cli
from keyserver.app import OPENAPI, STORE, create_app
from keyserver.config import Config
from keyserver.journal import Journal
from keyserver.models import KeyStatus, RevocationKind
from keyserver.store.redis import RedisStore
from lab.processes.app import APP_READY
from lab.processes.base import free_port
from lab.processes.redis_server import RedisServer
from tests.keyserver.keys_harness import KEYS, REVOKE, VIN, Api, Clock, Person

HANG_GUARD_S = 60.0  # only against a hang: never a timing assertion
PREFIX = Config().redis_prefix  # what the keyserver processes use


class KeyserverProcess:
    """``keyserver serve`` on a loopback port it picks; its JSON log lines, as they come."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[dict[str, Any]] = []
        self._more = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, data_dir: Path, redis_url: str) -> KeyserverProcess:
        env = {
            **os.environ,
            "PHONEKEY_PORT": "0",
            "PHONEKEY_DATA_DIR": str(data_dir),
            "PHONEKEY_REDIS_URL": redis_url,
            "PHONEKEY_LOG_LEVEL": "info",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keyserver.cli", "serve",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        async with asyncio.timeout(HANG_GUARD_S):
            while not (ready := APP_READY.search(line := await process.stderr.readline())):
                assert line, "keyserver exited before it was ready"
        return cls(process, int(ready.group(1)))

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                async with self._more:
                    self.lines.append(entry)
                    self._more.notify_all()

    async def logged(self, msg: str, **fields: object) -> dict[str, Any]:
        """The first log line with this message and these fields, once it is written."""

        def found() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in self.lines
                    if e.get("msg") == msg and all(e.get(k) == v for k, v in fields.items())
                ),
                None,
            )

        async with asyncio.timeout(HANG_GUARD_S), self._more:
            await self._more.wait_for(lambda: found() is not None)
        entry = found()
        assert entry is not None
        return entry

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)  # as a node failure or an OOM kill would
        await self.process.wait()
        await self._reader

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(HANG_GUARD_S):
                await self.process.wait()
        await self._reader


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    # as in production: an append-only file fsynced on every write, so a killed Redis comes
    # back with every write it acknowledged
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    with RedisServer(tmp_path / "redis", extra_args=durable) as server:
        yield server


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """The test's own connection to the keyservers' Redis, under their key prefix."""
    opened = await RedisStore.connect(redis_server.url, prefix=PREFIX)
    yield opened
    await opened.close()


@contextlib.asynccontextmanager
async def api_on(keyserver: KeyserverProcess, store: RedisStore) -> AsyncIterator[Api]:
    """The key API harness, through HTTP to the process; accounts go straight into Redis."""
    holder = web.Application()
    holder[STORE] = store  # type: ignore[type-abstract]
    holder[OPENAPI] = create_app(Config())[OPENAPI]  # the document every answer is checked on
    async with aiohttp.ClientSession(base_url=keyserver.url) as session:
        yield Api(holder, session, Clock())  # type: ignore[arg-type]


async def revoked_in_an_outage(
    tmp_path: Path, redis_server: RedisServer, store: RedisStore
) -> tuple[Path, Person, dict[str, Any], str]:
    """A guest's key revoked while Redis is down (202, journaled), then the keyserver that
    answered SIGKILLed, Redis still down: (its data dir, the guest, the key, the operation)."""
    data_dir = tmp_path / "keyserver"
    first = await KeyserverProcess.start(data_dir, redis_server.url)
    try:
        async with api_on(first, store) as api:
            owner = await api.person("owner")
            await api.vehicle(owner)
            guest = await api.person("guest")
            key = await api.share(owner, guest, role="guest")
            await api.call(owner, "GET", KEYS, proof=False, vin=VIN)  # last known, for the outage
            redis_server.kill()
            reply = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
            assert reply.status == 202, reply.data
            assert reply.body["status"] == "accepted_pending"
    finally:
        await first.kill()
    return data_dir, guest, key, str(reply.body["operation_id"])


async def assert_revoked(store: RedisStore, key: dict[str, Any], guest: Person) -> None:
    record = await store.key(key["key_id"])
    assert record is not None
    assert record.status is KeyStatus.REVOKED
    _, entries = await store.revocations(VIN)
    holders = {e.subject for e in entries if e.kind is RevocationKind.HOLDER}
    assert holder_id(guest.phone.xy) in holders  # the car will refuse the guest's tokens


async def test_a_keyserver_killed_in_an_outage_replays_its_journal_after_a_restart(
    tmp_path: Path, redis_server: RedisServer, store: RedisStore
) -> None:
    port = redis_server.port
    data_dir, guest, key, operation = await revoked_in_an_outage(tmp_path, redis_server, store)

    second = await KeyserverProcess.start(data_dir, redis_server.url)  # Redis still down
    try:
        await asyncio.to_thread(redis_server.start, port=port)
        replayed = await second.logged("journal replayed", op=operation)
        assert replayed["state"] == "done"
    finally:
        await second.stop()
    assert second.process.returncode == 0
    await assert_revoked(store, key, guest)


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyserver.cli", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(HANG_GUARD_S):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_journal_of_a_keyserver_gone_for_good_is_replayed_by_the_operator(
    tmp_path: Path, redis_server: RedisServer, store: RedisStore
) -> None:
    port = redis_server.port
    data_dir, guest, key, operation = await revoked_in_an_outage(tmp_path, redis_server, store)
    journal = data_dir / "journal.db"
    env = {"PHONEKEY_REDIS_URL": redis_server.url}
    replay = ("journal", "replay", "--data-dir", str(data_dir))

    # Redis still down: nothing is lost, the operator is told to run it again
    code, out, err = await run_cli(*replay, env=env)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"keyserver: journal {journal}: 0 done, 0 refused, 1 pending;"
        " the store is unavailable: run it again"
    ]

    await asyncio.to_thread(redis_server.start, port=port)
    listener = Redis.from_url(redis_server.url)
    notices = listener.pubsub()
    await notices.subscribe(f"{PREFIX}hub")  # what a running keyserver's hub bridge hears
    try:
        code, out, err = await run_cli(*replay, env=env)
        assert (code, err) == (0, "")
        assert out.splitlines() == [f"journal {journal}: 1 done, 0 refused, 0 pending"]
        async with asyncio.timeout(HANG_GUARD_S):
            while (message := await notices.get_message(timeout=None)) is not None:
                if message["type"] == "message":
                    break
        assert message is not None
        notice = json.loads(message["data"])
        assert (notice["kind"], notice["vin"]) == ("revoked", VIN)
    finally:
        await notices.aclose()
        await listener.aclose()
    await assert_revoked(store, key, guest)
    reopened = Journal.open(journal)
    done = reopened.operation(operation)
    reopened.close()
    assert done is not None
    assert done.state == "done"

    code, out, _ = await run_cli(*replay, env=env)  # again: nothing left to do
    assert (code, out.strip()) == (0, f"journal {journal}: 0 done, 0 refused, 0 pending")


def test_journal_replay_refuses_a_directory_with_no_journal_and_a_bad_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    replay = ["journal", "replay", "--data-dir", str(tmp_path)]
    assert cli.main(replay) == 1
    assert capsys.readouterr() == ("", f"keyserver: no journal at {tmp_path / 'journal.db'}\n")
    assert list(tmp_path.iterdir()) == []  # no journal made for a mistyped directory

    monkeypatch.setenv("PHONEKEY_REDIS_URL", "http://not-redis")
    assert cli.main(replay) == 2
    assert capsys.readouterr().err.splitlines() == [
        "keyserver: setting 'redis_url': must start with redis://, rediss:// or unix://"
    ]

    (tmp_path / "journal.db").write_bytes(b"not a database, " * 64)
    monkeypatch.setenv("PHONEKEY_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert cli.main(replay) == 1
    assert capsys.readouterr() == (
        "",
        f"keyserver: journal {tmp_path / 'journal.db'}: file is not a database\n",
    )
